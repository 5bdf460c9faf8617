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


# A measured landscape (the coupled arm of a 240-step digits pilot, seeds 0 and 2 averaged, test loss) on which
# derivative steps in the ridge's height stalled on a kink at b = −1.00 and reported the profile 35 % above its
# minimum, so the interval's upper end landed on the estimate itself (−1.00 [−1.23, −1.00]: "excludes −1").
PILOT_LR = [0.004, 0.00825913, 0.0170533, 0.0352114, 0.0727038, 0.150118, 0.30996]
PILOT_WD = [0.00177828, 0.00316228, 0.00562341, 0.01, 0.0177828, 0.0316228, 0.0562342, 0.1, 0.177828, 0.316228,
            0.562342, 1.0, 1.77828]
PILOT_MEAN = [
    [0.41021, 0.41015, 0.41013, 0.41115, 0.41172, 0.41257, 0.41246, 0.40788, 0.38836, 0.33241, 0.22806, 0.24099, 0.33218],
    [0.22725, 0.22867, 0.22911, 0.22793, 0.22927, 0.23413, 0.23274, 0.22736, 0.20508, 0.16259, 0.18115, 0.24344, 0.33856],
    [0.15754, 0.16102, 0.15868, 0.16034, 0.16091, 0.16514, 0.16474, 0.13957, 0.12919, 0.14875, 0.17824, 0.23884, 0.36368],
    [0.13924, 0.13817, 0.13825, 0.13420, 0.13323, 0.13616, 0.10520, 0.10456, 0.11895, 0.14287, 0.18927, 0.29160, 0.59020],
    [0.12091, 0.12405, 0.11987, 0.11084, 0.10864, 0.08879, 0.09668, 0.11053, 0.12344, 0.16208, 0.23777, 0.35282, 0.99597],
    [0.10075, 0.10726, 0.08720, 0.08414, 0.09631, 0.10682, 0.10989, 0.11849, 0.14096, 0.20870, 0.32786, 1.00168, 2.04264],
    [0.11331, 0.10029, 0.11875, 0.10037, 0.11773, 0.13640, 0.11927, 0.16590, 0.21891, 0.29788, 0.53463, 1.72123, 2.30031],
]


def test_the_profile_is_the_minimum_over_the_ridge_height_on_a_kinked_landscape():
    from study import valley

    x, y, mean = np.log(PILOT_LR), np.log(PILOT_WD), np.array(PILOT_MEAN)[None]
    fit = valley_fit(x, y, mean[0])
    W = valley._window(mean, valley.HALF_WINDOW).astype(float)
    M = np.where(W > 0, mean, 0.0)
    xc = (x - fit["x0"])[None]
    dense = np.linspace(y[0] - 3, y[-1] + 3, 20001)                   # brute force: the true minimum over a
    step = float(np.mean(np.diff(y)))
    a_grid = np.linspace(y[0] - 3 * step, y[-1] + 3 * step, valley.A_POINTS)
    for b in np.arange(-1.3, -0.69, 0.02):
        got, _ = valley._profile(xc, y, M, W, np.array([b]), a_grid)
        truth = min(valley._total(xc, y, M, W, dense[i:i + 2000], np.full(len(dense[i:i + 2000]), b)).min()
                    for i in range(0, len(dense), 2000))
        assert got[0] <= truth * (1 + 1e-6) + 1e-12, (b, got[0], truth)
    assert fit["lo"] < fit["slope"] - 0.1 and fit["hi"] > fit["slope"] + 0.1  # the estimate inside its interval
