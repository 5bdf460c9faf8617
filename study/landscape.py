"""From member results to landscapes: error grids per arm, the best λ per learning rate, and slopes.

Owns the statistics of the question "how does λ*(η) depend on η?". Pure numpy: reads no store and
draws nothing (tracking.py reads MLflow, plots.py draws). A member is a dict with optimizer, decay,
lr, weight_decay, seed, error and diverged.

λ*(η): per learning-rate row, a quadratic in log λ is fitted by least squares to the seed-averaged
errors at the row's best grid point and up to two neighbours on each side; its vertex (kept within
the grid) is the row's optimum. The slope is the least-squares slope of log λ* against log η.
Its 95 % interval is a bootstrap: over seeds when there are repeats (seeds resampled with
replacement, then rows), otherwise over rows alone; the spread is scaled by √(S/(S−1)) and
√(n/(n−2)) for the small numbers of seeds S and rows n. Measured coverage of the 95 % interval on
planted landscapes: tests/test_landscape.py.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

PREDICTED_SLOPE = {  # SCIENCE.md: slope of log λ*(η) against log η
    ("sgd", "coupled"): (-1.0, "about −1 (diagonal basin)"),
    ("sgd", "decoupled"): (-1.0, "about −1 (same product η·λ)"),
    ("sgd", "independent"): (0.0, "about 0 (separable)"),
    ("adam", "coupled"): (None, "no clean law; often best near λ → 0"),
    ("adam", "decoupled"): (-1.0, "about −1"),
    ("adam", "independent"): (0.0, "about 0"),
    ("adagrad", "coupled"): (None, "no clean law"),
    ("adagrad", "decoupled"): (-1.0, "about −1"),
    ("adagrad", "independent"): (0.0, "about 0"),
}


@dataclass
class ArmLandscape:
    optimizer: str
    decay: str
    lr: list[float]                   # sorted grid values (rows)
    weight_decay: list[float]         # sorted grid values (columns)
    error: list[list[float]]          # [row][col] mean over seeds; NaN where every seed diverged
    diverged: list[list[float]]       # fraction of seeds diverged
    seeds: list[int]
    best_weight_decay: list[float]    # λ*(η) per row (NaN where the row has no finite error)
    slope: float
    slope_ci: list[float]
    ci_method: str
    best: dict
    grid: bool = True                 # False: scattered samples interpolated onto a grid
    samples: list[dict] = field(default_factory=list)  # non-grid studies: the sampled points

    @property
    def arm(self) -> str:
        return f"{self.optimizer}-{self.decay}"

    @property
    def predicted(self):
        return PREDICTED_SLOPE.get((self.optimizer, self.decay), (None, "unknown"))

    def to_json(self) -> dict:
        def clean(v):
            if isinstance(v, float):
                return None if not math.isfinite(v) else v
            if isinstance(v, list):
                return [clean(x) for x in v]
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v
        return clean({"optimizer": self.optimizer, "decay": self.decay, "lr": self.lr,
                      "weight_decay": self.weight_decay, "error": self.error, "diverged": self.diverged,
                      "best_weight_decay": self.best_weight_decay, "slope": self.slope,
                      "slope_ci": self.slope_ci, "ci_method": self.ci_method,
                      "predicted_slope": self.predicted[0], "best": self.best, "seeds": self.seeds,
                      "grid": self.grid})


def _nanmean(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean over seeds ignoring diverged (NaN) entries; NaN where every seed diverged, without warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(a, axis=axis)


def row_optimum(log_wd: np.ndarray, err: np.ndarray, half_width: int = 2) -> float:
    """log λ* of one row: vertex of a least-squares quadratic around the best finite point, within the grid."""
    finite = np.isfinite(err)
    if not finite.any():
        return math.nan
    i = int(np.nanargmin(np.where(finite, err, np.inf)))
    lo, hi = max(0, i - half_width), min(len(err), i + half_width + 1)
    x, y = log_wd[lo:hi], err[lo:hi]
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) >= 3:
        a, b, _ = np.polyfit(x, y, 2)
        if a > 0:
            return float(np.clip(-b / (2 * a), log_wd[0], log_wd[-1]))
    return float(log_wd[i])


def ridge(lr: np.ndarray, wd: np.ndarray, err: np.ndarray) -> np.ndarray:
    """log λ*(η) per row of an error grid err[row=lr][col=wd]."""
    lw = np.log(wd)
    return np.array([row_optimum(lw, err[r]) for r in range(len(lr))])


def fit_slope(log_lr: np.ndarray, log_opt: np.ndarray) -> float:
    ok = np.isfinite(log_opt)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(log_lr[ok], log_opt[ok], 1)[0])


def slope_with_ci(lr, wd, per_seed: np.ndarray, n_boot: int = 1000, rng=None) -> tuple[float, list[float], str]:
    """Slope of log λ*(η) on log η and its 95 % bootstrap interval. per_seed: [seed][row][col] errors."""
    rng = rng or np.random.default_rng(0)
    lr, wd = np.asarray(lr, float), np.asarray(wd, float)
    log_lr = np.log(lr)
    mean = _nanmean(per_seed)
    opt = ridge(lr, wd, mean)
    slope = fit_slope(log_lr, opt)
    S = per_seed.shape[0]
    rows = np.flatnonzero(np.isfinite(opt))
    n = len(rows)
    boots = []
    for _ in range(n_boot):
        pick_rows = rng.choice(rows, n) if n else rows
        if len(set(pick_rows.tolist())) < 2:
            continue
        if S >= 2:  # resample seeds, recompute every row's optimum, then resample rows
            o = ridge(lr, wd, _nanmean(per_seed[rng.integers(0, S, S)]))
        else:
            o = opt
        boots.append(fit_slope(log_lr[pick_rows], o[pick_rows]))
    # small-sample scaling of the bootstrap spread: seeds (S/(S−1)) and rows of a 2-parameter fit (n/(n−2))
    scale = math.sqrt((S / (S - 1) if S >= 2 else 1.0) * (n / (n - 2) if n > 2 else 1.0))
    method = (f"bootstrap over {S} seeds and {n} rows" if S >= 2 else f"bootstrap over {n} rows (one seed)")
    boots = np.array([b for b in boots if math.isfinite(b)])
    if not math.isfinite(slope) or len(boots) < 10:
        return slope, [math.nan, math.nan], method
    dev = (boots - boots.mean()) * scale
    lo, hi = np.quantile(dev, [0.025, 0.975])
    return slope, [float(slope + lo), float(slope + hi)], method


def _is_grid(members: list[dict]) -> bool:
    lrs = {m["lr"] for m in members}
    wds = {m["weight_decay"] for m in members}
    settings = {(m["lr"], m["weight_decay"]) for m in members}
    return len(settings) == len(lrs) * len(wds) and len(lrs) >= 2 and len(wds) >= 2


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
    grid = griddata((x[ok], y[ok]), z[ok], (GX, GY), method="linear") if ok.sum() >= 3 else np.full(GX.shape, np.nan)
    return np.exp(gl), np.exp(gw), grid


def arm_landscape(members: list[dict], n_boot: int = 1000) -> ArmLandscape:
    """The landscape of one arm's members (all with the same optimizer and decay)."""
    opt, decay = members[0]["optimizer"], members[0]["decay"]
    seeds = sorted({int(m["seed"]) for m in members})
    grid = _is_grid(members)
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
    slope, ci, method = slope_with_ci(np.array(lr), np.array(wd), per_seed, n_boot=n_boot)
    if not grid:
        method += ", on a surface interpolated from the samples"
    mean = _nanmean(per_seed)
    opt_rows = ridge(np.array(lr), np.array(wd), mean)
    finite = [m for m in members if not m["diverged"] and math.isfinite(m["error"])]
    if grid and np.isfinite(mean).any():
        r, c = np.unravel_index(np.nanargmin(mean), mean.shape)
        best = {"lr": lr[r], "weight_decay": wd[c], "error": float(mean[r, c])}
    elif finite:
        b = min(finite, key=lambda m: m["error"])
        best = {"lr": b["lr"], "weight_decay": b["weight_decay"], "error": b["error"]}
    else:
        best = {"lr": math.nan, "weight_decay": math.nan, "error": math.nan}
    return ArmLandscape(opt, decay, [float(v) for v in lr], [float(v) for v in wd], mean.tolist(),
                        diverged_frac.tolist(), seeds, [float(math.exp(v)) if math.isfinite(v) else math.nan
                                                        for v in opt_rows],
                        slope, ci, method, best, grid,
                        [] if grid else [{k: m[k] for k in ("lr", "weight_decay", "error", "diverged")} for m in members])


def landscapes(members: list[dict], n_boot: int = 1000) -> list[ArmLandscape]:
    """One landscape per arm, ordered by optimizer, then coupled, decoupled, independent."""
    arms: dict[tuple, list[dict]] = {}
    for m in members:
        arms.setdefault((m["optimizer"], m["decay"]), []).append(m)
    order = {"coupled": 0, "decoupled": 1, "independent": 2}
    keys = sorted(arms, key=lambda k: (k[0], order.get(k[1], 3)))
    return [arm_landscape(arms[k], n_boot) for k in keys]
