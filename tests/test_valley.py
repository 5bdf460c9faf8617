"""The valley model's slope interval on planted landscapes of shapes it does not assume.

Each case draws whole grids at once (vectorized): 6 learning rates × 8 weight decays, a ridge of slope −1
or 0, noise σ per member, and one of: a lopsided valley (curvature 1.6× on one side of the floor, 0.4× on the
other), an offset shared by every cell of a seed, a per-seed wobble of the ridge, rows censored at the high
or the low edge. Coverage of the 95 % interval must lie in 92–98 % over 600 intervals per case (1 s.e. of a
0.95 coverage is ±0.009); the median width is printed beside that of the textbook row-vertex estimator
(tests/test_landscape.py's reference_ols) on the same landscapes.
"""

import math

import numpy as np
import pytest
from test_landscape import LRS, LW, WDS, center, reference_ols

from study.landscape import arm_landscape, row_optima
from study.valley import valley_fit

DRAWS = 300  # per true slope


def grids(rng, seeds, sigma, slope, shift=0.0, lopsided=0.0, seed_offset=0.0, wobble=0.0):
    """errors[draw, seed, lr, wd] around the ridge center(slope, shift)."""
    c = center(slope, shift)[None, None, :, None] + rng.normal(0, wobble, (DRAWS, seeds, len(LRS), 1))
    d = LW - c
    curvature = 0.02 * np.where(d > 0, 1 + lopsided, 1 - lopsided)
    g = 0.1 + curvature * d ** 2 + rng.normal(0, sigma, (DRAWS, seeds, len(LRS), len(WDS)))
    return g + rng.normal(0, seed_offset, (DRAWS, seeds, 1, 1))


WOBBLE = pytest.param("ridge wobble per seed", marks=pytest.mark.xfail(
    strict=True, reason="a known limit: the model takes a floor that moves row by row, seed by seed, for cell "
                        "noise, and covers 0.75 (docs/statistics.md); strict, so a fix shows up as a failure"))
CASES = {  # name: (seeds, sigma, extra)
    "quadratic": (2, 0.03, {}),
    "lopsided": (2, 0.03, {"lopsided": 0.6}),
    "seed offsets": (2, 0.03, {"seed_offset": 0.1}),
    "ridge wobble per seed": (3, 0.02, {"wobble": 0.3}),
    "censored high": (2, 0.03, {"shift": 4.8}),
    "censored low": (2, 0.03, {"shift": -3.2}),
    "lopsided, censored high, one seed": (1, 0.03, {"lopsided": 0.6, "shift": 4.8}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", [WOBBLE if c == "ridge wobble per seed" else c for c in CASES])
def test_the_interval_covers_on_shapes_the_model_does_not_assume(case):
    seeds, sigma, extra = CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)))
    covered, widths, ref_widths, slopes = [], [], [], []
    for truth in (-1.0, 0.0):
        g = grids(rng, seeds, sigma, truth, **extra)
        f = valley_fit(np.log(LRS), LW, g.mean(1))
        has = np.isfinite(f["slope"])
        assert has.mean() > 0.98
        covered.append(((f["lo"] <= truth) & (truth <= f["hi"]))[has])
        widths.append((f["hi"] - f["lo"])[has])
        slopes.append(f["slope"][has] - truth)
        _, rlo, rhi = reference_ols(g)
        ref_widths.append(rhi - rlo)
    coverage = np.concatenate(covered).mean()
    bias = np.median(np.concatenate(slopes))
    width, ref = np.median(np.concatenate(widths)), np.median(np.concatenate(ref_widths))
    print(f"{case}: coverage {coverage:.3f}, median bias {bias:+.3f}, median width {width:.3f} "
          f"(row vertices: {ref:.3f})")
    assert 0.92 <= coverage <= 0.98, coverage
    assert abs(bias) < 0.05


def test_a_noise_free_valley_gives_the_exact_slope_and_a_point_interval():
    for truth in (-1.0, 0.0, 0.7):
        mean = 0.1 + 0.02 * (LW - center(truth)[:, None]) ** 2
        f = valley_fit(np.log(LRS), LW, mean)
        assert f["slope"] == pytest.approx(truth, abs=1e-6)
        assert f["hi"] - f["lo"] == pytest.approx(0.0, abs=1e-6)
        assert f["a"] + f["slope"] * (np.log(LRS) - f["x0"]) == pytest.approx(center(truth), abs=1e-5)


def test_a_flat_landscape_does_not_bound_the_slope():
    rng = np.random.default_rng(0)
    f = valley_fit(np.log(LRS), LW, 0.1 + rng.normal(0, 0.01, (50, len(LRS), len(WDS))))
    unbounded = ~np.isfinite(f["lo"]) | ~np.isfinite(f["hi"]) | (f["hi"] - f["lo"] > 1.5)
    assert unbounded.mean() > 0.9


def test_diverged_cells_are_left_out_and_too_few_cells_give_no_interval():
    mean = 0.1 + 0.02 * (LW - center(-1.0)[:, None]) ** 2
    mean[:, -2:] = np.nan                               # every seed diverged at the two largest λ
    f = valley_fit(np.log(LRS), LW, mean)
    assert f["slope"] == pytest.approx(-1.0, abs=1e-6)
    two_rows = valley_fit(np.log(LRS[:2]), LW[:3], mean[:2, :3])    # 6 cells, 6 parameters: no residual dof
    assert int(two_rows["dof"]) == 0 and math.isnan(two_rows["lo"])


@pytest.mark.parametrize("metric", ["test_loss", "test_error", "train_loss"])
@pytest.mark.parametrize("side", ["low", "high"])
def test_a_monotone_row_is_censored_at_its_edge_whatever_a_curve_says(metric, side):
    """A row that rises (or falls) monotonically from one edge has no measured optimum: censored there, even
    where a quadratic through its first columns would put a vertex inside the grid."""
    rising = 0.1 + 0.03 * np.arange(len(WDS)) ** 1.5       # convex: a quadratic fit has its vertex inside
    row = rising if side == "low" else rising[::-1]
    _, code = row_optima(LW, row)
    assert int(code) == (-1 if side == "low" else 1)
    members = [dict(optimizer="sgd", decay="coupled", lr=float(lr), weight_decay=float(wd), seed=s,
                    error=float(v + 0.001 * s), diverged=False)
               for s in (0, 1) for lr in LRS for wd, v in zip(WDS, row)]
    land = arm_landscape(members, metric=metric)
    assert land.censored == [side] * len(LRS)
    assert land.best_weight_decay == pytest.approx([WDS[0] if side == "low" else WDS[-1]] * len(LRS))
    assert math.isnan(land.slope)                        # no row measured: no slope claimed
    assert land.to_json()["verdict"]["outcome"] == "inconclusive"
