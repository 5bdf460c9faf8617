"""From member results to landscapes: error grids per arm, the best λ per learning rate, slopes, verdicts.

Owns the statistics of the question "how does λ*(η) depend on η?". Pure numerics (numpy, and scipy for
t quantiles, the normal CDF and scattered-sample interpolation): reads no store and draws nothing
(tracking.py reads MLflow, plots.py draws). A member is a dict with optimizer, decay, lr, weight_decay,
seed, error and diverged.

λ*(η) per row, for display and refinement (row_optima): the best cell of the seed-averaged row counts as a
measured optimum only when the measurements bracket it (a worse neighbour on each side); its position is the
vertex of a quadratic in log λ through five neighbouring columns, kept between those two neighbours. A row
whose best cell is an edge column is **censored** ("low"/"high"): its optimum is only known to lie at or
beyond that edge, whatever a fitted curve says. Censored rows are drawn as such and drive `refine`.

The slope of log λ* = a + b·log η and its 95 % interval come from the valley model (study.valley): every
seed-averaged cell within two columns of its row's best, one quadratic valley per row with its own height
and curvature, the floor's line shared, and the profile-likelihood interval of b. It uses every cell
instead of one vertex per row (far more residual degrees of freedom at the same budget), and rows whose
best cell sits at an edge inform the line through the cells they have without their optimum being
claimed. Its coverage on planted landscapes, lopsided valleys, seed offsets and censored rows included,
is checked in tests/test_valley.py; docs/statistics.md gives the measurements.

Verdicts: the laws are "about −1" and "about 0", so an arm's interval is compared with the predicted law
± MARGIN (a quarter of the distance between the two laws): *consistent* when it lies inside, *contradicts*
when it lies wholly outside (and is at most DECISIVE_WIDTH, 1.5, wide); anything else is "inconclusive at
this budget", with what would decide it. docs/statistics.md says why a point law is not tested exactly.

Arm comparison (compare_arms): the difference of two arms' slopes, the two fits combined as independent
(Welch–Satterthwaite). A pair whose difference an identity fixes (decoupled vs independent decay of the
same optimizer: exactly −1) is printed as a self-check of the estimator, not as a finding.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from .registry import DECAY_MODES, OPTIMIZERS
from .spec import decay_timescale, has_timescale, shown
from .valley import valley_fit

ALTERNATIVE = {-1.0: 0.0, 0.0: -1.0}  # the other law: the verdict needs the interval to tell the two apart
LEVEL = 0.95
DECISIVE_WIDTH = 1.5  # an interval wider than this decides nothing, whatever it excludes
MARGIN = 0.25         # "about −1", "about 0": a slope within this of the law is the law (a quarter of the gap)
WINDOW = 5            # columns in a row's quadratic fit (row_optima)
MIN_MEASURED_ROWS = 2  # rows whose optimum the grid brackets, needed before an arm's slope is reported
MAX_SEEDS_ADVICE = 64


@dataclass
class ArmLandscape:
    optimizer: str
    decay: str
    lr: list[float]                   # sorted grid values (rows)
    weight_decay: list[float]         # sorted grid values (columns)
    error: list[list[float]]          # [row][col] mean over seeds; NaN where every seed diverged
    diverged: list[list[float]]       # fraction of seeds diverged
    seeds: list[int]
    best_weight_decay: list[float]    # λ*(η) per row; a censored row holds its edge value (a bound); NaN: no data
    slope: float
    slope_ci: list[float]
    ci_method: str
    best: dict
    grid: bool = True                 # False: scattered samples interpolated onto a grid
    samples: list[dict] = field(default_factory=list)  # non-grid studies: the sampled points
    censored: list = field(default_factory=list)       # per row: None, "low" or "high" (optimum beyond that edge)
    ridge_fit: dict = field(default_factory=dict)      # the fitted line and its covariance (valley model)
    metric: str = "error"             # the final metric the grid holds (e.g. test_loss)
    total_steps: int | None = None    # the run's optimizer steps (for the decay timescale), when recorded

    @property
    def arm(self) -> str:
        return f"{self.optimizer}-{self.decay}"

    @property
    def predicted(self):
        entry = OPTIMIZERS.get(self.optimizer)   # each optimizer's predictions live in its registry entry
        return entry.predicted_slope(self.decay) if entry and self.decay in DECAY_MODES else (None, "unknown")

    def to_json(self) -> dict:
        return _clean({"optimizer": self.optimizer, "decay": self.decay, "metric": self.metric, "lr": self.lr,
                       "weight_decay": self.weight_decay, "error": self.error, "diverged": self.diverged,
                       "best_weight_decay": self.best_weight_decay, "censored": self.censored,
                       "slope": self.slope, "slope_ci": self.slope_ci, "ci_method": self.ci_method,
                       "slope_ci_unbounded": [side for side, v in (("low", self.slope_ci[0]), ("high", self.slope_ci[1]))
                                              if isinstance(v, float) and math.isinf(v)],
                       "ridge_fit": self.ridge_fit, "predicted_slope": self.predicted[0], "best": self.best,
                       "seeds": self.seeds, "grid": self.grid, "edge_advice": edge_advice(self),
                       "refine_weight_decay": refine_weight_decays(self), "verdict": arm_verdict(self)})


def _clean(v):
    """JSON-safe: non-finite floats become null, numpy scalars become Python numbers."""
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


def _nanmean(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean over seeds ignoring diverged (NaN) entries; NaN where every seed diverged, without warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(a, axis=axis)


def _tq(dof, level: float = LEVEL):
    """Two-sided t quantile; NaN where dof < 1."""
    from scipy import stats

    dof = np.asarray(dof, float)
    with np.errstate(invalid="ignore"):
        return np.where(dof >= 1, stats.t.ppf(0.5 + level / 2, np.maximum(dof, 1)), np.nan)


# --------------------------------------------------------------------------- λ*(η): row optima

CENSOR_CODE = {-1: "low", 0: None, 1: "high"}


def row_optima(log_wd, err, window: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """log λ* of every row of err[..., col] and its censoring: (log_opt, code), code −1 low, +1 high, 0 measured.

    An optimum counts as measured only where the measurements bracket it: the row's best cell has a worse
    neighbour on each side (a diverged neighbour is worse). Its position is then the vertex of a quadratic in
    log λ through a window of `window` columns around the best, kept between the two bracketing neighbours.
    A row whose best cell is its first or last column is censored at that edge (its log_opt is the edge, a
    bound), whatever a fitted curve would say. Vectorized over any leading dims; a row without a finite value
    is NaN (code 0)."""
    log_wd = np.asarray(log_wd, float)
    err = np.asarray(err, float)
    C = err.shape[-1]
    fin = np.isfinite(err)
    any_f = fin.any(-1)
    i = np.argmin(np.where(fin, err, np.inf), axis=-1)
    W = min(window, C)
    start = np.clip(i - W // 2, 0, C - W)
    j = np.arange(C)
    inwin = (j >= start[..., None]) & (j < start[..., None] + W) & fin
    xc = log_wd[start + W // 2]
    t = log_wd - xc[..., None]
    y = np.where(inwin, err, 0.0)
    w = inwin.astype(float)
    T = np.stack([t ** 2, t, np.ones_like(t)], -1)
    A = np.einsum("...c,...ci,...cj->...ij", w, T, T)
    r = np.einsum("...c,...ci,...c->...i", w, T, y)
    enough = w.sum(-1) >= 3
    A = np.where(enough[..., None, None], A, np.eye(3))
    with np.errstate(all="ignore"):
        coef = np.linalg.solve(A, r[..., None])[..., 0]
        a, b = coef[..., 0], coef[..., 1]
        scale = np.where(inwin, np.abs(err), 0.0).max(-1)
        curved = enough & (a > 1e-12 * np.maximum(scale, 1e-300))
        vertex = np.where(curved, xc - b / (2 * np.where(curved, a, 1.0)), log_wd[i])
    bracket_lo = log_wd[np.clip(i - 1, 0, C - 1)]
    bracket_hi = log_wd[np.clip(i + 1, 0, C - 1)]
    vertex = np.clip(vertex, bracket_lo, bracket_hi)
    high = (i == C - 1) & (C > 1)
    low = (i == 0) & (C > 1)
    code = np.where(high, 1, np.where(low, -1, 0))
    opt = np.where(high, log_wd[-1], np.where(low, log_wd[0], vertex))
    measurable = any_f & (C >= 3 or (code != 0))       # one column brackets nothing: no optimum at all
    return np.where(measurable, opt, np.nan), np.where(any_f, code, 0)


# --------------------------------------------------------------------------- the ridge line: the valley model

def slope_intervals(lr, wd, per_seed, level: float = LEVEL) -> dict:
    """Everything the slope rests on, vectorized: per_seed[..., seed, row, col] errors (NaN = diverged).

    The valley model (study.valley) on the seed-averaged grid gives the slope, its profile interval lo/hi,
    the line (a, x0, cov) and its degrees of freedom; row_optima gives each row's measured optimum and
    censoring (log_opt, code), which are what the heatmap and refine read, not what the slope is fitted to."""
    per_seed = np.asarray(per_seed, float)
    mean = _nanmean(per_seed, axis=-3)
    log_wd = np.log(np.asarray(wd, float))
    log_opt, code = row_optima(log_wd, mean)
    fit = valley_fit(np.log(np.asarray(lr, float)), log_wd, mean, level)
    fit.update(log_opt=log_opt, code=code, n=(code == 0).sum(-1) - (~np.isfinite(log_opt)).sum(-1),
               low=(code == -1).sum(-1), high=(code == 1).sum(-1))
    return fit


def _method(fit: dict, seeds: int, rows: int) -> str:
    seeds_txt = f"{seeds} seeds averaged" if seeds > 1 else "one seed"
    used, cells, dof = int(fit["rows"]), int(fit["cells"]), int(fit["dof"])
    k = int(fit["low"]) + int(fit["high"])
    if int(fit["n"]) < MIN_MEASURED_ROWS:
        return (f"no slope: {int(fit['n'])} of {rows} rows have their optimum bracketed inside the grid "
                f"(the valley model needs {MIN_MEASURED_ROWS}; {seeds_txt})")
    if not math.isfinite(float(fit["lo"])) and not math.isinf(float(fit["lo"])):
        return f"no interval: {cells} cells in {used} of {rows} rows are too few for the valley model ({seeds_txt})"
    edge = f"; {k} of {rows} rows have their best cell at a grid edge" if k else ""
    return (f"profile interval of the valley model ({dof} dof): {cells} cells near the floor of {used} rows "
            f"({seeds_txt}){edge}")


# --------------------------------------------------------------------------- arm landscapes

def _is_grid(members: list[dict]) -> bool:
    lrs = {m["lr"] for m in members}
    wds = {m["weight_decay"] for m in members}
    settings = {(m["lr"], m["weight_decay"]) for m in members}
    return len(settings) == len(lrs) * len(wds)   # every (η, λ) of the two axes, down to a 1 × 1 grid


def _interpolate(members: list[dict], points: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scattered samples (TPE, random …) onto a log grid: linear interpolation inside their hull."""
    from scipy.interpolate import griddata

    x = np.log([m["lr"] for m in members])
    y = np.log([m["weight_decay"] for m in members])
    z = np.array([m["error"] if not m["diverged"] else np.nan for m in members], float)
    ok = np.isfinite(z)
    gl = np.linspace(x.min(), x.max(), points)
    gw = np.linspace(y.min(), y.max(), points)
    GX, GY = np.meshgrid(gl, gw, indexing="ij")
    grid = np.full(GX.shape, np.nan)
    if ok.sum() >= 3:
        from scipy.spatial import QhullError

        try:
            grid = griddata((x[ok], y[ok]), z[ok], (GX, GY), method="linear")
        except QhullError:   # samples on one line (or one point): no surface between them; the samples stay listed
            pass
    return np.exp(gl), np.exp(gw), grid


def _seed_means(members: list[dict]) -> list[dict]:
    """A sampler's members as settings: per (lr, weight_decay) the mean over the seeds that did not diverge
    (diverged only when every seed did), as a grid's cells and the settings' records are."""
    by: dict[tuple, list[dict]] = {}
    for m in members:
        by.setdefault((m["lr"], m["weight_decay"]), []).append(m)
    out = []
    for (lr, wd), ms in by.items():
        ok = [m["error"] for m in ms if not m["diverged"] and math.isfinite(m["error"])]
        out.append({**ms[0], "error": math.fsum(ok) / len(ok) if ok else math.nan, "diverged": not ok})
    return out


def arm_landscape(members: list[dict], metric: str = "error") -> ArmLandscape:
    """The landscape of one arm's members (all with the same optimizer and decay)."""
    opt, decay = members[0]["optimizer"], members[0]["decay"]
    seeds = sorted({int(m["seed"]) for m in members})
    grid = _is_grid(members)
    if not grid:  # a sampler's settings, each the mean over its seeds: a lucky seed is not a point of its own
        members = _seed_means(members)
    if grid:
        lr = sorted({m["lr"] for m in members})
        wd = sorted({m["weight_decay"] for m in members})
        per_seed = np.full((len(seeds), len(lr), len(wd)), np.nan)
        div = np.zeros((len(seeds), len(lr), len(wd)))
        present = np.zeros_like(div)
        for m in members:
            s, r, c = seeds.index(int(m["seed"])), lr.index(m["lr"]), wd.index(m["weight_decay"])
            present[s, r, c] = 1
            if m["diverged"]:
                div[s, r, c] = 1
            else:
                per_seed[s, r, c] = m["error"]
        with np.errstate(all="ignore"):
            diverged_frac = div.sum(0) / np.maximum(present.sum(0), 1)
    else:
        lr, wd, g = _interpolate(members)
        lr, wd = list(lr), list(wd)
        per_seed = g[None]
        diverged_frac = np.zeros_like(g)
    f = slope_intervals(np.array(lr), np.array(wd), per_seed)
    if int(f["n"]) < MIN_MEASURED_ROWS:       # a ridge through fewer measured optima is an extrapolation
        f.update(slope=np.float64(math.nan), lo=np.float64(math.nan), hi=np.float64(math.nan))
    method = _method(f, len(seeds), len(lr))
    if not grid:
        method += ", on a surface interpolated from the samples (not calibrated: interpolated cells are not independent)"
    mean = _nanmean(per_seed)
    finite = [m for m in members if not m["diverged"] and math.isfinite(m["error"])]
    if grid and np.isfinite(mean).any():
        r, c = np.unravel_index(np.nanargmin(mean), mean.shape)
        best = {"lr": lr[r], "weight_decay": wd[c], "error": float(mean[r, c])}
    elif finite:
        b = min(finite, key=lambda m: m["error"])
        best = {"lr": b["lr"], "weight_decay": b["weight_decay"], "error": b["error"]}
    else:
        best = {"lr": math.nan, "weight_decay": math.nan, "error": math.nan}
    ridge_fit = {"slope": float(f["slope"]), "log_lr_center": float(f["x0"]), "log_wd_at_center": float(f["a"]),
                 "cov": f["cov"].tolist(), "dof": int(f["dof"]), "rows_measured": int(f["n"]),
                 "rows_censored_low": int(f["low"]), "rows_censored_high": int(f["high"]),
                 "model": "valley", "rows_fitted": int(f["rows"]), "cells": int(f["cells"])}
    return ArmLandscape(opt, decay, [float(v) for v in lr], [float(v) for v in wd], mean.tolist(),
                        diverged_frac.tolist(), seeds,
                        [float(math.exp(v)) if math.isfinite(v) else math.nan for v in f["log_opt"]],
                        float(f["slope"]), [float(f["lo"]), float(f["hi"])], method, best, grid,
                        [] if grid else [{k: m[k] for k in ("lr", "weight_decay", "error", "diverged")} for m in members],
                        [CENSOR_CODE[int(c)] for c in f["code"]], ridge_fit, metric,
                        next((int(m["total_steps"]) for m in members if m.get("total_steps")), None))


def landscapes(members: list[dict], metric: str = "error") -> list[ArmLandscape]:
    """One landscape per arm, ordered by optimizer, then coupled, decoupled, independent.
    `metric` names what members' `error` holds (e.g. test_loss)."""
    arms: dict[tuple, list[dict]] = {}
    for m in members:
        arms.setdefault((m["optimizer"], m["decay"]), []).append(m)
    order = {"coupled": 0, "decoupled": 1, "independent": 2}
    keys = sorted(arms, key=lambda k: (k[0], order.get(k[1], 3)))
    return [arm_landscape(arms[k], metric=metric) for k in keys]


def row_best_cells(land: ArmLandscape) -> list[tuple[int, int]]:
    """(row, column) of the observed best cell of every row with a finite cell: what the heatmaps mark,
    beside the fitted ridge (the two can disagree; neither is drawn as the other)."""
    err = np.array(land.error, float)
    return [(r, int(np.nanargmin(row))) for r, row in enumerate(err) if np.isfinite(row).any()]


# --------------------------------------------------------------------------- the fitted ridge, used

def _fit_arrays(land: ArmLandscape):
    f = land.ridge_fit
    if not f or not math.isfinite(f.get("slope", math.nan)):
        return None
    return f["log_wd_at_center"], f["slope"], f["log_lr_center"], np.array(f["cov"], float), f["dof"]


def predict_log_wd(land: ArmLandscape, lr, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log λ* on the fitted ridge at learning rate(s) lr, with the interval of the line there (NaN if none)."""
    x = np.log(np.asarray(lr, float))
    fa = _fit_arrays(land)
    if fa is None:
        nan = np.full(x.shape, np.nan)
        return nan, nan, nan
    a, b, x0, cov, dof = fa
    mean = a + b * (x - x0)
    if not all(math.isfinite(v) for v in land.slope_ci):   # the data do not bound the slope: no band either
        nan = np.full(x.shape, np.nan)
        return mean, nan, nan
    var = cov[0, 0] + 2 * (x - x0) * cov[0, 1] + (x - x0) ** 2 * cov[1, 1]
    half = _tq(dof, level) * np.sqrt(var)
    return mean, mean - half, mean + half


def _grid_step(land: ArmLandscape) -> float:
    lw = np.log(np.asarray(land.weight_decay, float))
    return float(np.mean(np.diff(lw))) if len(lw) > 1 else math.log(10.0)


def _extension(land: ArmLandscape, side: str, max_steps: int = 4) -> int:
    """Grid steps to add beyond `side` so that the censored rows' optima (from the fitted ridge) get one
    measured column beyond them: at least 1, at most max_steps (refine again if still censored)."""
    h = _grid_step(land)
    rows = [r for r, c in enumerate(land.censored) if c == side]
    edge = math.log(land.weight_decay[-1] if side == "high" else land.weight_decay[0])
    mean, _, _ = predict_log_wd(land, [land.lr[r] for r in rows])
    beyond = (mean - edge) if side == "high" else (edge - mean)
    beyond = beyond[np.isfinite(beyond)]
    if not len(beyond):
        return min(2, max_steps)
    return int(min(max_steps, max(1, math.ceil(float(beyond.max()) / h - 1e-9) + 1)))


def refine_weight_decays(land: ArmLandscape, max_steps: int = 4) -> list[float]:
    """New weight decay columns that would complete the censored rows: log-spaced with the grid's own step,
    beyond whichever edge rows are censored at, up to one step past the fitted ridge (at most max_steps
    per side). Empty when no row is censored."""
    h = _grid_step(land)
    out = []
    for side in ("low", "high"):
        if side not in land.censored:
            continue
        k = _extension(land, side, max_steps)
        edge = math.log(land.weight_decay[-1] if side == "high" else land.weight_decay[0])
        sign = 1 if side == "high" else -1
        out += [float(math.exp(edge + sign * h * j)) for j in range(1, k + 1)]
    return sorted(out)


def refine_columns(land: ArmLandscape, max_steps: int = 4) -> list[float]:
    """What search.refine trains: refine_weight_decays, less any λ whose decay factor would not stay positive
    and any λ so small that decay does nothing within the run in every row (min_weight_decay)."""
    cap, floor = max_weight_decay(land), min_weight_decay(land)
    return [w for w in refine_weight_decays(land, max_steps) if floor <= w < cap]


TIMESCALE_FLOOR = 10   # a λ whose decay timescale exceeds this many runs in every row does nothing in the run


def min_weight_decay(land: ArmLandscape) -> float:
    """The smallest λ at which decay still acts within the run in some row: its timescale τ (1/(η·λ) coupled
    and decoupled, 1/λ independent, √v̂/(η·λ) coupled Adam; docs/science.md) at most TIMESCALE_FLOOR runs.
    Below it a lower λ changes nothing the run can see, so a row whose best λ is at the low edge there prefers no
    decay, and columns further down measure noise. An arm with no stated timescale (coupled Adagrad, Lion) gets
    the plain rule 1/(η·λ). 0 when the run's length is not recorded."""
    if not land.total_steps:
        return 0.0
    reach = TIMESCALE_FLOOR * land.total_steps
    optimizer = land.optimizer if has_timescale(land.optimizer, land.decay) else None
    return decay_timescale(land.decay, max(land.lr), 1.0, optimizer) / reach   # τ ∝ 1/λ: τ(λ) = τ(1)/λ


def timescale_rule(optimizer: str, decay: str) -> str:
    """How the arm's decay timescale τ is computed (spec.decay_timescale), as printed beside a τ."""
    if decay == "independent":
        return "1/λ"
    if decay == "coupled" and optimizer in OPTIMIZERS and OPTIMIZERS[optimizer].coupled_sqrt_v:
        return f"√v̂/(η·λ), √v̂ = {OPTIMIZERS[optimizer].coupled_sqrt_v:g} typical"
    return "1/(η·λ)"


def max_weight_decay(land: ArmLandscape) -> float:
    """The largest λ whose per-step decay factor stays positive: independent w·(1 − s_t·λ) needs λ < 1 (s_t ≤ 1),
    decoupled w·(1 − η_t·λ) needs λ < 1/max η. Coupled decay enters the gradient and has no such bound."""
    if land.decay == "independent":
        return 1.0
    if land.decay == "decoupled":
        return 1.0 / max(land.lr)
    return math.inf


def edge_advice(land: ArmLandscape) -> str | None:
    """'best λ at the edge in 3 of 6 rows: extend weight_decay.high to about 4.5', or None."""
    rows = [c for c in land.censored if c is not None]
    if not rows:
        return None
    measured = sum(1 for v in land.best_weight_decay if math.isfinite(v))
    h = _grid_step(land)
    parts = []
    for side in ("high", "low"):
        if side in rows:
            k = _extension(land, side)
            edge = math.log(land.weight_decay[-1] if side == "high" else land.weight_decay[0])
            x = math.exp(edge + (h if side == "high" else -h) * k)
            floor = min_weight_decay(land)
            if side == "low" and x < floor:   # no column below the floor helps: say why the rows sit at the edge
                if land.weight_decay[0] * math.exp(-h) < floor:
                    parts.append(f"the low edge is where decay's timescale exceeds {TIMESCALE_FLOOR}× the run's "
                                 f"{land.total_steps} steps: those rows prefer little or no decay, and a lower λ "
                                 f"changes nothing the run sees")
                else:
                    parts.append(f"extend weight_decay.low to about {floor:.2g} (below it decay's timescale exceeds "
                                 f"{TIMESCALE_FLOOR}× the run)")
                continue
            parts.append(f"extend weight_decay.{side} to about {x:.2g}")
    return f"best λ at the edge in {len(rows)} of {measured} rows: " + " and ".join(parts)


def measured_lr_range(land: ArmLandscape) -> tuple[float, float] | None:
    """The learning rates between which the arm's ridge was measured (rows with λ* inside the grid)."""
    rows = [v for v, c, w in zip(land.lr, land.censored, land.best_weight_decay) if c is None and math.isfinite(w)]
    return (min(rows), max(rows)) if len(rows) >= 2 and _fit_arrays(land) is not None else None


def recommend(land: ArmLandscape, lr: float, level: float = LEVEL) -> dict:
    """λ*(η) from the arm's fitted ridge with its interval, and the η·λ product and decay timescale it means.
    Raises ValueError (one line) for an η outside the measured rows or an arm without a fitted ridge."""
    rng = measured_lr_range(land)
    rows = [v for v, c, w in zip(land.lr, land.censored, land.best_weight_decay) if c is None and math.isfinite(w)]
    if rng is None:
        raise ValueError(f"invalid --arm: {land.arm} has no fitted ridge ({len(rows)} rows measured inside the "
                         f"weight_decay grid); widen its grid first")
    lo_lr, hi_lr = rng
    if not (lo_lr * (1 - 1e-9) <= lr <= hi_lr * (1 + 1e-9)):
        raise ValueError(f"invalid --lr: {lr:.10g} is outside the learning rates where {land.arm}'s ridge was measured "
                         f"[{shown(lo_lr)}, {shown(hi_lr)}]; no extrapolation")
    m, lo, hi = (float(v[0]) for v in predict_log_wd(land, [lr], level))
    wd, wd_lo, wd_hi = math.exp(m), math.exp(lo) if math.isfinite(lo) else math.nan, \
        math.exp(hi) if math.isfinite(hi) else math.nan
    verdict = arm_verdict(land)
    warnings = []
    if verdict["outcome"] == "inconclusive":
        warnings.append(f"{land.arm}'s verdict is inconclusive at this budget: read λ* as a rough guide")
    best = land.best
    if all(isinstance(best.get(k), float) and math.isfinite(best[k]) for k in ("lr", "weight_decay")) \
            and lo_lr * (1 - 1e-9) <= best["lr"] <= hi_lr * (1 + 1e-9):
        _, b_lo, b_hi = (float(v[0]) for v in predict_log_wd(land, [best["lr"]], level))
        half = _grid_step(land) / 2                   # a cell stands for λ within half a column of it
        if math.isfinite(b_lo) and not b_lo - half <= math.log(best["weight_decay"]) <= b_hi + half:
            warnings.append(f"the fitted ridge's interval at η={shown(best['lr'])} [{shown(math.exp(b_lo))}, "
                            f"{shown(math.exp(b_hi))}] excludes the best setting this study measured "
                            f"(λ={shown(best['weight_decay'])} at η={shown(best['lr'])}): the valley is not a straight "
                            f"ridge there")
    return {"arm": land.arm, "lr": lr, "weight_decay": wd, "weight_decay_ci": [wd_lo, wd_hi],
            "lr_x_weight_decay": lr * wd, "timescale_steps": decay_timescale(land.decay, lr, wd, land.optimizer),
            "timescale_rule": timescale_rule(land.optimizer, land.decay), "lr_range": [lo_lr, hi_lr],
            "rows": len(rows), "level": level, "verdict": verdict["outcome"], "verdict_text": verdict["text"],
            "warnings": warnings}


# --------------------------------------------------------------------------- verdicts

def fmt_number(v, fmt=".2f") -> str:
    """A number as every output spells it (terminal, report, figures): ±∞ for an unbounded interval end, n/a for
    a missing value."""
    if isinstance(v, (int, float)) and math.isinf(v):
        return "−∞" if v < 0 else "+∞"
    return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def _rows_needed(n: int, hw: float, target: float) -> int | None:
    """Evenly spread rows over the same lr range that would bring the half-width to `target` (the slope's
    standard error shrinks as 1/√Σ(x−x̄)²)."""
    if n < 2:
        return None
    sxx = lambda k: k * (k + 1) / (k - 1)  # noqa: E731  Σ(x−x̄)² of k evenly spaced points, up to the range²
    for k in range(n + 1, 65):
        if hw * math.sqrt(sxx(n) / sxx(k)) <= target:
            return k
    return None


def arm_verdict(land: ArmLandscape) -> dict:
    """One of: consistent with the prediction, contradicts it, inconclusive at this budget (and what would
    decide it), or no prediction (docs/science.md states no law for the arm).

    The laws are "about −1" and "about 0". Consistent: the interval lies inside the predicted law ± MARGIN (so
    it also excludes the other law). Contradicts: it lies wholly outside that band and is at most DECISIVE_WIDTH
    wide. Both are decisive; a point law tested exactly would flip between the two whenever the true slope sits
    a few hundredths from it and the interval is that narrow (docs/statistics.md)."""
    pred, pred_text = land.predicted
    lo, hi = land.slope_ci
    s = land.slope
    measured = [c for c, w in zip(land.censored, land.best_weight_decay) if math.isfinite(w)]
    k = sum(c is not None for c in measured)
    n = len(measured) - k
    fitted = int((land.ridge_fit or {}).get("rows_fitted", n))
    S = len(land.seeds)
    alt = ALTERNATIVE.get(pred) if pred is not None else None
    out = {"arm": land.arm, "predicted": pred, "alternative": alt, "margin": MARGIN, "slope": s, "ci": [lo, hi],
           "offset": (s - pred) if pred is not None else math.nan, "rows_measured": n, "rows_censored": k,
           "decide": [], "decisive": False}
    ci = f"slope {fmt_number(s)} [{fmt_number(lo)}, {fmt_number(hi)}]"
    edge = f"; {k} of {n + k} rows have their best λ at the grid edge" if k else ""
    if pred is None:
        out.update(outcome="no prediction", text=f"no prediction to test ({pred_text}); {ci}{edge}")
        return out
    if not (math.isfinite(lo) and math.isfinite(hi)):
        decide = ["a wider weight_decay grid"] if k else []
        if n < MIN_MEASURED_ROWS:
            decide.append(f"rows whose optimum the grid brackets ({n} of {n + k}; the slope needs {MIN_MEASURED_ROWS})")
        else:
            decide.append("more seeds or learning rates (the data do not bound the slope)" if fitted >= 2
                          else f"more learning rates ({fitted} rows fitted)")
        out.update(outcome="inconclusive", decide=decide,
                   text=f"inconclusive at this budget: {ci}{edge}; what would decide it: " + ", ".join(decide))
        return out
    band = f"the predicted {pred:g} ± {MARGIN:g}"
    if pred - MARGIN <= lo and hi <= pred + MARGIN:
        other = f" and excludes {alt:g}" if alt is not None else ""
        out.update(outcome="consistent", decisive=True,
                   text=f"consistent with the prediction: {ci} lies within {band}{other}{edge}")
        return out
    wide = hi - lo > DECISIVE_WIDTH
    if not wide and (lo > pred + MARGIN or hi < pred - MARGIN):
        note = ": refine the grid to confirm" if k else ""
        out.update(outcome="contradicts", decisive=True,
                   text=f"contradicts it: {ci} lies outside {band}{edge}{note}")
        return out
    # to decide, the interval must fit inside the band, or clear it: half-widths of about |s − pred| ∓ MARGIN
    target = min(max(abs(abs(s - pred) - MARGIN), MARGIN / 2), DECISIVE_WIDTH / 2)
    hw = (hi - lo) / 2
    decide = []
    if k:
        decide.append(f"a wider weight_decay grid ({k} of {n + k} rows at its edge)")
    seeds = math.ceil(S * (hw / target) ** 2)
    decide.append(f"about {seeds} seeds (now {S})" if seeds <= MAX_SEEDS_ADVICE else f"more than {MAX_SEEDS_ADVICE} seeds (now {S})")
    rows = _rows_needed(fitted, hw, target)
    decide.append(f"or about {rows} learning rates (now {fitted})" if rows else "or a wider learning-rate range")
    why = f"is wider than {DECISIVE_WIDTH:g}" if wide else f"reaches across the edge of {band}"
    out.update(outcome="inconclusive", decide=decide,
               text=f"inconclusive at this budget: {ci} {why}{edge}; what would decide it "
                    f"(interval ±{target:.2g}): " + ", ".join(decide))
    return out


def _equivalent_se(fit_lo, fit_hi, dof, level: float = LEVEL):
    """The standard error a t-interval of the same width would have: (hi − lo) / (2·t(ν)); NaN if unbounded."""
    with np.errstate(all="ignore"):
        se = (np.asarray(fit_hi, float) - np.asarray(fit_lo, float)) / (2 * _tq(dof, level))
    return np.where(np.isfinite(se), se, np.nan)


def difference_interval(fit_a: dict, fit_b: dict, level: float = LEVEL) -> dict:
    """Slope difference a − b of two valley fits (slope_intervals dicts) and its interval, vectorized.

    The two fits are combined as independent: each interval's equivalent standard error, added in
    quadrature, with Welch–Satterthwaite degrees of freedom. Arms that share seeds share part of their noise
    (initial weights, batch order); combining them as independent then errs on the wide side."""
    diff = np.asarray(fit_a["slope"], float) - np.asarray(fit_b["slope"], float)
    va = _equivalent_se(fit_a["lo"], fit_a["hi"], fit_a["dof"], level) ** 2
    vb = _equivalent_se(fit_b["lo"], fit_b["hi"], fit_b["dof"], level) ** 2
    with np.errstate(all="ignore"):
        dof = (va + vb) ** 2 / (va ** 2 / np.maximum(fit_a["dof"], 1) + vb ** 2 / np.maximum(fit_b["dof"], 1))
        half = _tq(np.where(np.isfinite(dof), dof, 0), level) * np.sqrt(va + vb)
    return {"difference": diff, "lo": diff - half, "hi": diff + half, "dof": dof}


def decisive(lo: float, hi: float, hypotheses) -> bool:
    """An interval decides when it is at most DECISIVE_WIDTH wide and excludes at least one hypothesis."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi - lo > DECISIVE_WIDTH:
        return False
    return any(not lo <= h <= hi for h in hypotheses if h is not None)


def _arm_fit(land: ArmLandscape) -> dict:
    f = land.ridge_fit or {}
    return {"slope": land.slope, "lo": land.slope_ci[0], "hi": land.slope_ci[1], "dof": f.get("dof", 0)}


def compare_arms(lands: list[ArmLandscape], level: float = LEVEL) -> list[dict]:
    """Every pair of arms: the difference of slopes with a joint interval, its prediction and one sentence.

    Decisive, as for an arm: the interval at most DECISIVE_WIDTH wide and excluding 0 or the predicted
    difference. A pair whose difference is fixed by an identity of the update rules (decoupled(η, λ) is
    independent(η, η·λ) step for step, so their slopes differ by exactly −1) is a self-check of the
    estimator, not a finding, and says so."""
    out = []
    for i, A in enumerate(lands):
        for B in lands[i + 1:]:
            r = difference_interval(_arm_fit(A), _arm_fit(B), level)
            d, lo, hi = float(r["difference"]), float(r["lo"]), float(r["hi"])
            pa, pb = A.predicted[0], B.predicted[0]
            pd = (pa - pb) if pa is not None and pb is not None else None
            identity = identity_difference(A, B)
            name = f"{A.arm} − {B.arm}"
            method = "the two valley fits combined as independent (Welch)"
            if not (math.isfinite(lo) and math.isfinite(hi)):
                outcome = "inconclusive"
                text = f"{name}: slope difference {fmt_number(d, '+.2f')}, no interval at this budget"
            else:
                ci = f"{fmt_number(d, '+.2f')} [{fmt_number(lo, '+.2f')}, {fmt_number(hi, '+.2f')}]"
                if identity is not None:
                    held = lo <= identity <= hi
                    wide = hi - lo > DECISIVE_WIDTH
                    outcome = "self-check fails" if not held else ("inconclusive" if wide else "self-check holds")
                    text = (f"{name}: self-check, not a finding: the update rules make this difference exactly "
                            f"{identity:+g}; measured {ci} {'holds' if held else 'EXCLUDES'} it"
                            + ("" if held else ": the estimator is off on this data")
                            + (f", but is wider than {DECISIVE_WIDTH:g}: it checks nothing at this budget"
                               if held and wide else ""))
                else:
                    pred_txt = ""
                    if pd is not None:
                        pred_txt = f"; {'holds' if lo <= pd <= hi else 'excludes'} the predicted {pd:+g}"
                    zero = "excludes 0: λ*(η) moves differently in the two arms" if (lo > 0 or hi < 0) \
                        else "holds 0: no difference detected"
                    # the hypotheses to tell apart: 0 and the predicted difference; where the prediction is 0
                    # itself (or there is none), 0 and a difference of one unit of slope either way
                    hypotheses = (0.0, pd) if pd not in (None, 0.0) else (0.0, -1.0, 1.0)
                    tells = decisive(lo, hi, hypotheses) and (pd not in (None, 0.0) or not (lo <= -1 or hi >= 1)
                                                              or lo > 0 or hi < 0)
                    if tells:
                        outcome = "differ" if (lo > 0 or hi < 0) else "no difference detected"
                        text = f"{name}: slope difference {ci} {zero}{pred_txt}"
                    else:
                        outcome = "inconclusive"
                        why = (f"wider than {DECISIVE_WIDTH:g}" if hi - lo > DECISIVE_WIDTH
                               else "holds both 0 and the predicted difference" if pd not in (None, 0.0)
                               else "holds 0 and a difference of ±1")
                        text = f"{name}: slope difference {ci} {zero}{pred_txt}; inconclusive at this budget ({why})"
            out.append({"arms": [A.arm, B.arm], "difference": d, "ci": [lo, hi], "predicted_difference": pd,
                        "identity": identity, "method": method, "outcome": outcome, "text": text})
    return out


def identity_difference(A: ArmLandscape, B: ArmLandscape) -> float | None:
    """The slope difference A − B that the update rules fix exactly, or None.

    decoupled(η, λ) ≡ independent(η, η·λ) for every optimizer of this project (the decay factor is
    1 − η·s_t·λ in both, outside any momentum or adaptive state), so log λ*_independent = log η +
    log λ*_decoupled: with the same optimizer, the slopes differ by exactly 1. (Plain SGD without momentum
    makes coupled ≡ decoupled too; the landscape does not know the momentum, so that pair is not checked.)"""
    if A.optimizer != B.optimizer or {A.decay, B.decay} != {"decoupled", "independent"}:
        return None
    return -1.0 if B.decay == "independent" else 1.0


def study_verdict(lands: list[ArmLandscape]) -> dict:
    """The study's answer: a verdict per arm, one per pair of arms, and the sentences that say them."""
    arms = [arm_verdict(L) for L in lands]
    pairs = compare_arms(lands)
    lines = [f"{v['arm']}: {v['text']}" for v in arms] + [p["text"] for p in pairs]
    return _clean({"arms": arms, "pairs": pairs, "lines": lines})


def _key(s: str) -> str:
    """An MLflow-safe metric/tag name part."""
    return "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in s)


def parent_metrics(lands: list[ArmLandscape]) -> dict[str, float]:
    """Per arm: slope, ci_low, ci_high, best_lr, best_weight_decay, best_<metric>; per pair: the slope
    difference and its interval. Finite values only; names valid for MLflow. Each rounded to the 4 significant
    digits a person reads (MLflow's tables show a metric's 16; the exact values are in landscape.json)."""
    out = {}
    for L in lands:
        a = _key(L.arm)
        vals = {"slope": L.slope, "ci_low": L.slope_ci[0], "ci_high": L.slope_ci[1], "best_lr": L.best["lr"],
                "best_weight_decay": L.best["weight_decay"], f"best_{_key(L.metric)}": L.best["error"],
                "rows_censored": float(sum(c is not None for c in L.censored))}
        out.update({f"{a}.{k}": float(shown(v)) for k, v in vals.items()
                    if isinstance(v, (int, float)) and math.isfinite(v)})
    for p in compare_arms(lands):
        a = f"{_key(p['arms'][0])}_minus_{_key(p['arms'][1])}"
        for k, v in (("slope_difference", p["difference"]), ("ci_low", p["ci"][0]), ("ci_high", p["ci"][1])):
            if math.isfinite(v):
                out[f"{a}.{k}"] = float(shown(v))
    return out


def verdict_tags(lands: list[ArmLandscape]) -> dict[str, str]:
    """Tags for the MLflow parent run: verdict.<arm> (outcome: sentence) and verdict.<a>_minus_<b>."""
    out = {}
    for v in (arm_verdict(L) for L in lands):
        out[f"verdict.{_key(v['arm'])}"] = v["text"][:5000]
    for p in compare_arms(lands):
        out[f"verdict.{_key(p['arms'][0])}_minus_{_key(p['arms'][1])}"] = p["text"][:5000]
    return out
