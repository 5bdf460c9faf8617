"""Landscape statistics on planted landscapes whose true λ*(η) is known.

Planted: error = 0.1 + 0.02·(log λ − log λ*(η))² + N(0, σ²) per member, λ*(η) = 3e-3·e^shift·(η/0.055)^slope,
on 6 learning rates × 8 weight decays. The interval tests draw whole grids at once (vectorized) so that
coverage is measured over enough draws to tell 95 % from 100 %.
"""

import json
import math

import numpy as np
import pytest
from scipy import stats

from study.landscape import (arm_landscape, difference_interval, edge_advice, landscapes, recommend,
                             refine_weight_decays, row_optima, slope_intervals)

LRS = np.geomspace(0.01, 0.3, 6)
WDS = np.geomspace(1e-4, 1.0, 8)
LW = np.log(WDS)
STEP = LW[1] - LW[0]


def center(slope, shift=0.0, lrs=LRS):
    return math.log(3e-3) + shift + slope * np.log(np.asarray(lrs) / 0.055)


def planted(rng, seeds, sigma=0.02, arms=(("sgd", "coupled", -1.0), ("sgd", "independent", 0.0)), shift=0.0,
            wds=WDS, lrs=LRS):
    """Members of planted arms (optimizer, decay, slope)."""
    members = []
    for opt, decay, slope in arms:
        for s in range(seeds):
            for lr, c in zip(lrs, center(slope, shift, lrs)):
                for wd in wds:
                    err = 0.1 + 0.02 * (math.log(wd) - c) ** 2 + rng.normal(0, sigma)
                    members.append(dict(optimizer=opt, decay=decay, lr=float(lr), weight_decay=float(wd),
                                        seed=s, error=float(err), diverged=False))
    return members


def planted_grids(rng, draws, seeds, sigma, slope, shift=0.0, jitter=None):
    """errors[draw, seed, lr, wd]; jitter[draw, seed, lr] moves each seed's ridge (shared noise)."""
    c = np.broadcast_to(center(slope, shift), (draws, seeds, len(LRS)))
    if jitter is not None:
        c = c + jitter
    return 0.1 + 0.02 * (LW - c[..., None]) ** 2 + rng.normal(0, sigma, (draws, seeds, len(LRS), len(WDS)))


def reference_ols(grids):
    """The textbook reference, written independently: on the seed-averaged grid, each row's optimum is the
    vertex of np.polyfit's quadratic over the best column and two neighbours each side (clipped to the
    grid), then the OLS slope of those optima on log η with its t-interval (n−2 dof)."""
    mean = grids.mean(1)                                        # (draws, rows, cols)
    D, R, C = mean.shape
    flat = mean.reshape(-1, C)
    best = flat.argmin(1)
    opt = LW[best].astype(float)
    for i in range(C):
        rows = np.flatnonzero(best == i)
        if not len(rows):
            continue
        lo, hi = max(0, i - 2), min(C, i + 3)
        a, b, _ = np.polyfit(LW[lo:hi], flat[rows, lo:hi].T, 2)
        ok = a > 0
        opt[rows[ok]] = np.clip(-b[ok] / (2 * a[ok]), LW[0], LW[-1])
    y = opt.reshape(D, R)
    x = np.log(LRS)
    dx = x - x.mean()
    slope = (dx * (y - y.mean(1, keepdims=True))).sum(1) / (dx ** 2).sum()
    resid = y - y.mean(1, keepdims=True) - slope[:, None] * dx
    se = np.sqrt((resid ** 2).sum(1) / (R - 2) / (dx ** 2).sum())
    half = stats.t.ppf(0.975, R - 2) * se
    return slope, slope - half, slope + half


# --------------------------------------------------------------------------- row optima


def _row_optimum(log_wd, err) -> float:
    return float(row_optima(log_wd, np.asarray(err, float)[None])[0][0])


def test_row_optimum_exact_on_a_parabola_and_censored_beyond_the_grid():
    assert _row_optimum(LW, (LW - math.log(2e-3)) ** 2) == pytest.approx(math.log(2e-3))
    assert _row_optimum(LW, (LW - math.log(0.3)) ** 2) == pytest.approx(math.log(0.3))  # near the edge: still exact
    # best cell at the edge: not bracketed, so censored there, although a quadratic would place it inside
    assert row_optima(LW, (LW - math.log(0.7)) ** 2)[1] == 1
    assert row_optima(LW, (LW - math.log(1.3e-4)) ** 2)[1] == -1
    opt, code = row_optima(LW, np.stack([(LW - math.log(10.0)) ** 2, (LW - math.log(1e-6)) ** 2,
                                         np.full(8, np.nan), (LW - math.log(1e-2)) ** 2]))
    assert code.tolist() == [1, -1, 0, 0]            # beyond the high edge, beyond the low edge, no data, inside
    assert opt[0] == LW[-1] and opt[1] == LW[0]      # a censored row holds its edge (a bound)
    assert math.isnan(opt[2])
    flat = np.linspace(0.5, 0.1, 8)                  # monotone, no curvature: the best is beyond the high edge
    assert row_optima(LW, flat)[1] == 1


def test_noise_free_slopes_are_exact():
    coupled, independent = landscapes(planted(np.random.default_rng(0), 1, sigma=0.0))
    assert coupled.slope == pytest.approx(-1.0, abs=1e-6)
    assert independent.slope == pytest.approx(0.0, abs=1e-6)
    assert coupled.best_weight_decay[0] == pytest.approx(3e-3 * 0.055 / 0.01, rel=1e-6)
    assert coupled.censored == [None] * 6


# --------------------------------------------------------------------------- calibrated intervals

DRAWS = 500  # per true slope: 1000 intervals per case; a coverage of 0.95 is measured to ±0.007 (1 s.e.)


@pytest.mark.parametrize("seeds", [1, 2, 3])
@pytest.mark.parametrize("sigma", [0.02, 0.05])
def test_intervals_are_calibrated_and_no_wider_than_the_ols_reference(seeds, sigma):
    rng = np.random.default_rng(100 * seeds + int(sigma * 1000))
    covered, widths, ref_widths, ref_covered = [], [], [], []
    for truth in (-1.0, 0.0):
        grids = planted_grids(rng, DRAWS, seeds, sigma, truth)
        f = slope_intervals(LRS, WDS, grids)
        assert np.isfinite(f["lo"]).all() and (f["lo"] < f["slope"]).all() and (f["slope"] < f["hi"]).all()
        assert np.abs(f["slope"].mean() - truth) < 0.05
        covered.append((f["lo"] <= truth) & (truth <= f["hi"]))
        widths.append(f["hi"] - f["lo"])
        _, rlo, rhi = reference_ols(grids)
        ref_covered.append((rlo <= truth) & (truth <= rhi))
        ref_widths.append(rhi - rlo)
        assert 0.9 <= covered[-1].mean() <= 0.99, (truth, covered[-1].mean())
    coverage = np.concatenate(covered).mean()
    ratio = np.median(np.concatenate(widths)) / np.median(np.concatenate(ref_widths))
    print(f"seeds={seeds} sigma={sigma}: coverage {coverage:.3f} (reference {np.concatenate(ref_covered).mean():.3f}), "
          f"median width {np.median(np.concatenate(widths)):.3f} = {ratio:.3f}× the reference")
    assert 0.92 <= coverage <= 0.98, coverage
    assert ratio <= 1.25, ratio


# --------------------------------------------------------------------------- censored rows


@pytest.mark.parametrize("seeds,sigma,shift,side,beyond", [
    (2, 0.03, 4.8, "high", 2),
    (2, 0.03, 5.5, "high", 3),
    (3, 0.05, 5.5, "high", 3),
    (2, 0.03, -3.2, "low", 3),
])
def test_rows_beyond_the_edge_are_censored_and_the_slope_stays_unbiased(seeds, sigma, shift, side, beyond):
    rng = np.random.default_rng(7)
    truth = center(-1.0, shift)
    off = (truth - LW[-1]) / STEP if side == "high" else (LW[0] - truth) / STEP   # steps beyond the edge
    assert (off > 0).sum() == beyond                                              # the scenario: rows off the grid
    grids = planted_grids(rng, 400, seeds, sigma, -1.0, shift)
    f = slope_intervals(LRS, WDS, grids)
    has = np.isfinite(f["slope"])
    assert has.mean() > 0.97
    bias = f["slope"][has].mean() + 1.0
    median_bias = np.median(f["slope"][has]) + 1.0
    code = 1 if side == "high" else -1
    flagged = (f["code"] == code)
    print(f"{beyond} rows beyond the {side} edge: slope bias {bias:+.3f} (median {median_bias:+.3f}); "
          f"flagged per row {flagged.mean(0).round(2)}")
    assert abs(median_bias) < 0.05 and abs(bias) < 0.15
    assert (flagged[:, off >= 1.0].mean(0) >= 0.95).all()         # a step or more beyond: flagged
    assert (flagged[:, off >= 0.5].mean(0) >= 0.85).all()
    # a row is measured only where its best cell is bracketed, so a row one step inside is flagged whenever
    # noise makes the edge cell its best (P ≈ Φ(−curvature·step²/σ_cell)): at most 15 % here; two steps: never
    assert (flagged[:, off <= -1.0].mean(0) <= 0.15).all()
    assert (flagged[:, off <= -2.0].mean(0) <= 0.01).all()
    with_ci = np.isfinite(f["lo"]) & np.isfinite(f["hi"])
    cover = ((f["lo"] <= -1) & (-1 <= f["hi"]))[has].mean()      # an unbounded side covers
    assert 0.92 <= cover <= 0.99, cover
    assert with_ci.mean() > 0.8                                   # else honest: the data do not bound it
    ref_slope, _, _ = reference_ols(grids)                        # clipping rows to the edge: biased toward 0
    print(f"  clipped to the edge instead (the old rule): mean slope bias {ref_slope.mean() + 1.0:+.3f}")
    assert ref_slope.mean() + 1.0 > 0.15


def test_a_landscape_marks_censored_rows_and_says_how_to_extend_the_grid():
    land = arm_landscape(planted(np.random.default_rng(1), 2, sigma=0.01, arms=(("sgd", "coupled", -1.0),),
                                 shift=5.8), metric="test_loss")       # rows 0-2 beyond the high edge
    nearer_edge = center(-1.0, 5.8) > (LW[-1] + LW[-2]) / 2                  # row 3: inside, nearer the edge
    assert nearer_edge.tolist() == [True] * 4 + [False] * 2
    assert land.censored == ["high"] * 4 + [None] * 2
    assert land.ridge_fit["rows_censored_high"] == sum(c == "high" for c in land.censored)
    advice = edge_advice(land)
    k = sum(c is not None for c in land.censored)
    assert advice.startswith(f"best λ at the edge in {k} of 6 rows: extend weight_decay.high to about ")
    x = float(advice.rsplit(" ", 1)[1])
    assert x >= WDS[-1] * math.exp(STEP) * 0.95          # at least one grid step beyond the edge
    assert x >= math.exp(center(-1.0, 5.8)[0])           # and past the ridge's extrapolated optimum
    new = refine_weight_decays(land)
    assert new and min(new) > WDS[-1]
    steps = np.diff(np.log([WDS[-1]] + new))
    assert steps == pytest.approx(np.full(len(new), STEP))  # same log step as the grid
    doc = land.to_json()
    json.dumps(doc, allow_nan=False)
    assert doc["censored"][:3] == ["high"] * 3 and doc["edge_advice"] == advice
    assert doc["refine_weight_decay"] == new and doc["metric"] == "test_loss"
    assert doc["verdict"]["rows_censored"] == k


def test_refinement_completes_a_censored_landscape_and_recovers_the_slope():
    rng = np.random.default_rng(2)
    arm = (("sgd", "coupled", -1.0),)
    wds = list(WDS)
    members = planted(rng, 2, sigma=0.01, arms=arm, shift=5.5, wds=wds)
    land = arm_landscape(members)
    assert sum(c is not None for c in land.censored) >= 3
    for _ in range(3):
        new = refine_weight_decays(land)
        if not new:
            break
        members += planted(rng, 2, sigma=0.01, arms=arm, shift=5.5, wds=new)  # new members, nothing re-run
        land = arm_landscape(members)
    assert land.censored == [None] * 6, land.censored
    assert land.slope == pytest.approx(-1.0, abs=0.1)
    assert land.slope_ci[1] - land.slope_ci[0] < 0.5 and land.slope_ci[1] < -0.5
    assert edge_advice(land) is None and refine_weight_decays(land) == []


def test_a_ridge_entirely_beyond_the_grid_gives_no_slope_and_asks_for_a_wider_grid():
    land = arm_landscape(planted(np.random.default_rng(3), 2, sigma=0.01, arms=(("sgd", "independent", 0.0),),
                                 shift=8.0))
    assert land.censored == ["high"] * 6
    assert math.isnan(land.slope) and math.isnan(land.slope_ci[0])
    v = land.to_json()["verdict"]
    assert v["outcome"] == "inconclusive" and "a wider weight_decay grid" in v["text"]
    assert refine_weight_decays(land, max_steps=2) == pytest.approx([math.exp(LW[-1] + STEP), math.exp(LW[-1] + 2 * STEP)])


# --------------------------------------------------------------------------- arm comparison


def test_slope_difference_with_shared_seed_noise_stays_calibrated():
    """Two arms share seeds; each seed moves both arms' ridges alike, row by row (e.g. the same initial
    weights). The difference combines the two fits as independent and still covers."""
    rng = np.random.default_rng(4)
    D, S = 400, 2
    jitter = rng.normal(0, 0.5, (D, S, len(LRS)))
    fa = slope_intervals(LRS, WDS, planted_grids(rng, D, S, 0.03, -1.0, jitter=jitter))
    fb = slope_intervals(LRS, WDS, planted_grids(rng, D, S, 0.03, 0.0, jitter=jitter))
    r = difference_interval(fa, fb)
    cover = ((r["lo"] <= -1) & (-1 <= r["hi"])).mean()
    print(f"difference with shared seed noise: coverage {cover:.3f}, median width {np.median(r['hi'] - r['lo']):.3f}")
    assert 0.92 <= cover <= 0.99


def test_slope_difference_of_independent_arms_is_calibrated():
    rng = np.random.default_rng(5)
    D = 500
    fa = slope_intervals(LRS, WDS, planted_grids(rng, D, 2, 0.04, -1.0))
    fb = slope_intervals(LRS, WDS, planted_grids(rng, D, 1, 0.04, 0.0))
    r = difference_interval(fa, fb)
    cover = ((r["lo"] <= -1) & (-1 <= r["hi"])).mean()
    assert 0.92 <= cover <= 0.98, cover


# --------------------------------------------------------------------------- recommend (pure part)


def test_recommend_reads_the_fitted_ridge_and_refuses_to_extrapolate():
    coupled, independent = landscapes(planted(np.random.default_rng(6), 2, sigma=0.01))
    r = recommend(coupled, 0.05)
    truth = 3e-3 * 0.055 / 0.05
    assert r["weight_decay"] == pytest.approx(truth, rel=0.15)
    lo, hi = r["weight_decay_ci"]
    assert lo < r["weight_decay"] < hi and hi / lo < 2
    assert r["lr_x_weight_decay"] == pytest.approx(0.05 * r["weight_decay"])
    assert r["timescale_steps"] == pytest.approx(1 / (0.05 * r["weight_decay"]))
    ri = recommend(independent, 0.05)
    assert ri["timescale_steps"] == pytest.approx(1 / ri["weight_decay"]) and ri["timescale_rule"] == "1/λ"
    for bad in (0.005, 0.31, 2.0):
        with pytest.raises(ValueError, match=r"invalid --lr: .* outside .*no extrapolation"):
            recommend(coupled, bad)
    assert r["verdict"] == "consistent" and r["warnings"] == []


def test_recommend_warns_when_the_verdict_is_inconclusive_or_the_ridge_misses_the_best_setting():
    noisy = arm_landscape(planted(np.random.default_rng(8), 1, sigma=0.3, arms=(("sgd", "coupled", -1.0),)))
    r = recommend(noisy, 0.05)
    assert r["verdict"] == "inconclusive"
    assert any("verdict is inconclusive" in w for w in r["warnings"])
    members = planted(np.random.default_rng(9), 2, sigma=0.002, arms=(("sgd", "coupled", -1.0),))
    far = WDS[0]                                         # a lucky cell far off the ridge in the middle row
    for m in members:
        if m["lr"] == LRS[2] and m["weight_decay"] == far:
            m["error"] = 0.0
    land = arm_landscape(members)
    assert land.best["weight_decay"] == far and land.best["lr"] == LRS[2]
    r = recommend(land, 0.05)
    assert any("excludes the best setting this study measured" in w for w in r["warnings"]), r["warnings"]


# --------------------------------------------------------------------------- unchanged behaviour


def test_diverged_members_are_not_numbers_on_the_grid():
    members = planted(np.random.default_rng(0), 2, sigma=0.0, arms=(("adam", "decoupled", -1.0),))
    for m in members:
        if m["lr"] == LRS[-1] and m["weight_decay"] == WDS[0]:
            m["diverged"], m["error"] = True, 0.9
    land = arm_landscape(members)
    assert math.isnan(land.error[-1][0]) and land.diverged[-1][0] == 1.0
    assert land.to_json()["error"][-1][0] is None
    assert land.best["error"] == pytest.approx(np.nanmin(np.array(land.error, dtype=float)))
    assert land.slope == pytest.approx(-1.0, abs=1e-6)


def scattered(rng, n):
    """n SGD-coupled members at log-uniform (lr, wd), as a random sampler places them, on a ridge of slope −1."""
    members = []
    for _ in range(n):
        lr, wd = math.exp(rng.uniform(math.log(0.01), math.log(0.3))), math.exp(rng.uniform(math.log(1e-4), 0))
        c = math.log(3e-3) - math.log(lr / 0.055)
        members.append(dict(optimizer="sgd", decay="coupled", lr=lr, weight_decay=wd, seed=0,
                            error=0.1 + 0.02 * (math.log(wd) - c) ** 2, diverged=False))
    return members


def test_scattered_samples_are_interpolated():
    members = scattered(np.random.default_rng(0), 120)
    land = arm_landscape(members)
    assert not land.grid and len(land.samples) == 120
    assert land.slope == pytest.approx(-1.0, abs=0.25)
    assert "interpolated" in land.ci_method


@pytest.mark.filterwarnings("error")
def test_degenerate_grids_give_a_landscape_without_a_slope_and_keep_every_measurement():
    """One weight-decay column, a 1 × 1 grid, samples on one line: no traceback, no numpy warning, no slope,
    and the measured cells are kept (they were lost to an interpolated grid of nulls, or a QhullError)."""
    def m(lr, wd, seed, e):
        return dict(optimizer="sgd", decay="coupled", lr=lr, weight_decay=wd, seed=seed, error=e, diverged=False)
    one_column = [m(lr, 0.01, s, 0.1 + lr) for lr in (0.01, 0.03, 0.1) for s in (0, 1)]
    (land,) = landscapes(one_column, metric="test_loss")
    assert land.grid and np.array(land.error).ravel() == pytest.approx([0.11, 0.13, 0.2])
    assert math.isnan(land.slope) and land.to_json()["verdict"]["outcome"] == "inconclusive"
    (single,) = landscapes([m(0.01, 0.01, 0, 0.2)])
    assert single.error == [[0.2]] and single.best["error"] == 0.2 and math.isnan(single.slope)
    (line,) = landscapes([m(0.01 * i, 0.001 * i, 0, 0.1) for i in range(1, 6)])
    assert not line.grid and len(line.samples) == 5 and math.isnan(line.slope)


def test_a_samplers_landscape_is_made_of_settings_averaged_over_seeds():
    """TPE or random sample settings and train each with every seed: the surface and the best are the settings'
    means over seeds (as a grid's cells and the settings' records), never a lucky seed on its own."""
    def m(lr, wd, seed, err, diverged=False):
        return {"optimizer": "sgd", "decay": "coupled", "lr": lr, "weight_decay": wd, "seed": seed, "error": err,
                "diverged": diverged}
    members = [m(0.01, 1e-3, 0, 0.30), m(0.01, 1e-3, 1, 0.60),     # mean 0.45, one lucky seed
               m(0.03, 3e-3, 0, 0.40), m(0.03, 3e-3, 1, 0.42),     # mean 0.41: the best setting
               m(0.10, 1e-2, 0, 0.50), m(0.10, 1e-2, 1, 9.0, diverged=True),  # a diverged seed is left out
               m(0.05, 2e-2, 0, 0.70), m(0.05, 2e-2, 1, 0.72)]
    land = arm_landscape(members)
    assert not land.grid and len(land.samples) == 4
    assert land.best == {"lr": 0.03, "weight_decay": 3e-3, "error": pytest.approx(0.41)}
    assert {(s["lr"], round(s["error"], 6)) for s in land.samples} == {(0.01, 0.45), (0.03, 0.41), (0.10, 0.5),
                                                                        (0.05, 0.71)}
