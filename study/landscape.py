"""From member results to landscapes: error grids per arm, the best λ per learning rate, slopes, verdicts.

Owns the statistics of the question "how does λ*(η) depend on η?". Pure numerics (numpy, and scipy for
t quantiles, the normal CDF and scattered-sample interpolation): reads no store and draws nothing
(tracking.py reads MLflow, plots.py draws). A member is a dict with optimizer, decay, lr, weight_decay,
seed, error and diverged.

λ*(η), one learning-rate row at a time, on the seed-averaged grid: a least-squares quadratic in log λ
through a window of five neighbouring columns (the window centred on the row's best column, shifted
inwards at the grid's ends, so that rows near an edge all use the same outermost five columns); its
vertex is the row's optimum. A row whose vertex lies beyond the first or last column (or whose best
column is an edge column and shows no curvature) is **censored**: its optimum is only known to lie
beyond that edge. Censored rows are flagged ("low"/"high"), drawn as such, and enter the fit as bounds.

The ridge log λ* = a + b·log η is fitted by least squares on the measured rows when no row is
censored, and otherwise by maximum likelihood with censored rows as bounds (a censored-normal, "Tobit",
likelihood; measured rows enter with their value, censored ones with P(optimum beyond the edge)).
Without censored rows this is exactly ordinary least squares.

The 95 % interval of the slope is a t-interval: b ± t(0.975, n−2)·se, with n the number of measured
rows and se the usual least-squares standard error, s²/Σ(x−x̄)² with s² = RSS/(n−2) (for the
censored-normal fit: its inverse-information standard error scaled by n/(n−2), which is the same
number when nothing is censored). Why this interval: each row optimum comes from the seed-averaged
grid, so its scatter about the line already holds every source of noise once (seed-to-seed noise,
evaluation noise, and the lack of fit of a straight line), and rows are independent measurements, so
the residual spread across rows is the right yardstick, with n−2 degrees of freedom for the small
numbers of rows these grids have. The bootstrap this module used before resampled seeds and then rows,
which counted seed noise twice (2.3–2.9× too wide). Measured on planted landscapes (6 lr × 8 λ, noise
σ = 0.02 and 0.05 per member, 1–3 seeds, true slopes −1 and 0, 4000 intervals per case): coverage
0.941–0.950, median width 0.95–1.00× that of the textbook OLS t-interval on the seed-averaged row optima
(tests/test_landscape.py asserts 0.92–0.98 and ≤ 1.25× over 1000 intervals per case). With 3 of 6 rows
beyond the grid edge (truth −1, 2–3 seeds) the mean slope is −0.99 to −1.01 where clipping those rows to
the edge gave −0.54 to −0.57, and the intervals cover 95–96 % when ≥ 3 rows are measured.

Arm comparison (compare_arms): the difference of two arms' slopes. When both arms measured the same
learning rates and no row is censored, the difference is the least-squares slope of the row-wise
differences of log λ* (a paired t-interval with n−2 dof): noise the arms share, such as shared seeds'
initial weights and batch order, cancels in it. Otherwise the two fits are combined as independent
(Welch–Satterthwaite).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from .spec import decay_timescale

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
ALTERNATIVE = {-1.0: 0.0, 0.0: -1.0}  # the other law: the verdict needs the interval to tell the two apart
LEVEL = 0.95
WINDOW = 5            # columns in a row's quadratic fit
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
    ridge_fit: dict = field(default_factory=dict)      # the fitted line and its covariance (see fit_ridge)
    metric: str = "error"             # the final metric the grid holds (e.g. test_loss)

    @property
    def arm(self) -> str:
        return f"{self.optimizer}-{self.decay}"

    @property
    def predicted(self):
        return PREDICTED_SLOPE.get((self.optimizer, self.decay), (None, "unknown"))

    def to_json(self) -> dict:
        return _clean({"optimizer": self.optimizer, "decay": self.decay, "metric": self.metric, "lr": self.lr,
                       "weight_decay": self.weight_decay, "error": self.error, "diverged": self.diverged,
                       "best_weight_decay": self.best_weight_decay, "censored": self.censored,
                       "slope": self.slope, "slope_ci": self.slope_ci, "ci_method": self.ci_method,
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

    Vectorized over any leading dims. A censored row's log_opt is its edge (the bound); a row without
    a finite value is NaN (code 0)."""
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
    tol = 1e-9 * max(1.0, float(np.ptp(log_wd)) if C > 1 else 1.0)
    high = (curved & (vertex > log_wd[-1] + tol)) | (~curved & (i == C - 1) & (C > 1))
    low = (curved & (vertex < log_wd[0] - tol)) | (~curved & (i == 0) & (C > 1))
    code = np.where(high, 1, np.where(low, -1, 0))
    opt = np.where(high, log_wd[-1], np.where(low, log_wd[0], vertex))
    return np.where(any_f, opt, np.nan), np.where(any_f, code, 0)


def row_optimum(log_wd: np.ndarray, err: np.ndarray) -> float:
    """log λ* of one row (its edge when the optimum lies beyond the grid; NaN without data)."""
    opt, _ = row_optima(log_wd, np.asarray(err, float)[None])
    return float(opt[0])


def ridge(lr, wd, err) -> tuple[np.ndarray, np.ndarray]:
    """log λ*(η) per row of an error grid err[row=lr][col=wd], and each row's censoring code."""
    return row_optima(np.log(np.asarray(wd, float)), err)


# --------------------------------------------------------------------------- the ridge line

def _solve(A, b):
    """Batched solve that tolerates singular systems (least-squares answer there)."""
    try:
        return np.linalg.solve(A, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return (np.linalg.pinv(A) @ b[..., None])[..., 0]


def _tobit(xc, y, unc, cen_hi, cen_lo, upper, lower, iters: int = 100):
    """Censored-normal maximum likelihood of y = a + b·xc + N(0, s²), batched over rows of the inputs (D, R).

    Olsen's parameters (a/s, b/s, 1/s) make the log-likelihood concave; Newton with step halving.
    Returns coef (D, 2) = (a, b) and its inverse-information covariance (D, 2, 2)."""
    from scipy import special

    D, R = y.shape
    X = np.stack([np.ones_like(xc), xc], -1)                      # (D, R, 2)
    yv = np.where(unc, y, 0.0)
    w = unc.astype(float)
    A = np.einsum("dr,dri,drj->dij", w, X, X)
    beta = _solve(A, np.einsum("dr,dri,dr->di", w, X, yv))
    res = (yv - np.einsum("drk,dk->dr", X, beta)) * w
    s = np.sqrt((res ** 2).sum(-1) / np.maximum(w.sum(-1), 1))
    s = np.maximum(s, 0.05 * (upper - lower) / max(R, 1) + 1e-6)  # a start the censored rows can pull on
    th = np.concatenate([beta / s[:, None], 1 / s[:, None]], -1)
    cen = cen_hi | cen_lo
    c = np.where(cen_hi, upper, np.where(cen_lo, lower, 0.0))
    sign = np.where(cen_hi, 1.0, np.where(cen_lo, -1.0, 0.0))
    V = np.concatenate([X, -c[..., None]], -1) * sign[..., None]  # z = V·θ = ±(a + b·x − c)/s
    half_log_2pi = 0.5 * math.log(2 * math.pi)

    def evaluate(th):
        d, g = th[:, :2], th[:, 2]
        e = g[:, None] * yv - np.einsum("drk,dk->dr", X, d)
        z = np.einsum("drk,dk->dr", V, th)
        log_phi = special.log_ndtr(z)
        mills = np.exp(-0.5 * z ** 2 - half_log_2pi - log_phi)
        with np.errstate(divide="ignore", invalid="ignore"):
            ll = np.where(unc, np.log(g)[:, None] - 0.5 * e ** 2, 0.0).sum(-1) + np.where(cen, log_phi, 0.0).sum(-1)
        gu = np.concatenate([e[..., None] * X, (1 / g[:, None] - e * yv)[..., None]], -1)
        grad = np.where(unc[..., None], gu, 0.0).sum(1) + np.where(cen[..., None], mills[..., None] * V, 0.0).sum(1)
        Hu = np.zeros((D, R, 3, 3))
        Hu[..., :2, :2] = -X[..., :, None] * X[..., None, :]
        Hu[..., :2, 2] = Hu[..., 2, :2] = X * yv[..., None]
        Hu[..., 2, 2] = -1 / g[:, None] ** 2 - yv ** 2
        Hc = -(mills * (z + mills))[..., None, None] * V[..., :, None] * V[..., None, :]
        H = np.where(unc[..., None, None], Hu, 0.0).sum(1) + np.where(cen[..., None, None], Hc, 0.0).sum(1)
        return ll, grad, H

    ll, grad, H = evaluate(th)
    active = np.ones(D, bool)
    for _ in range(iters):
        with np.errstate(all="ignore"):
            step = _solve(H - 1e-12 * np.eye(3), grad)
        step = np.where(active[:, None] & np.isfinite(step), step, 0.0)
        t = np.ones(D)
        for _ in range(30):
            new = th - t[:, None] * step
            ok_g = new[:, 2] > 0
            ll_new = np.where(ok_g, evaluate(np.where(ok_g[:, None], new, th))[0], -np.inf)
            bad = ~(ll_new >= ll - 1e-12 * np.abs(ll)) & active
            if not bad.any():
                break
            t = np.where(bad, t / 2, t)
        th = np.where(active[:, None], new, th)
        active &= np.abs(t[:, None] * step).max(-1) > 1e-10 * (1 + np.abs(th).max(-1))
        ll, grad, H = evaluate(th)
        if not active.any():
            break
    with np.errstate(all="ignore"):
        cov_th = np.linalg.pinv(-H)
    d0, d1, g = th[:, 0], th[:, 1], th[:, 2]
    J = np.zeros((D, 2, 3))
    J[:, 0, 0] = J[:, 1, 1] = 1 / g
    J[:, 0, 2], J[:, 1, 2] = -d0 / g ** 2, -d1 / g ** 2
    return np.stack([d0 / g, d1 / g], -1), J @ cov_th @ J.transpose(0, 2, 1)


def fit_ridge(log_lr, log_opt, code, lower: float, upper: float) -> dict:
    """The line log λ* = a + b·(log η − x0) through row optima, censored rows as bounds; vectorized over
    leading dims of log_opt/code (rows last). lower/upper: log of the grid's first/last weight decay.

    Returns arrays: slope b, x0, a (log λ* at x0), cov (2×2 of a, b, small-sample scaled), dof (n−2 with
    n measured rows; the t-interval's degrees of freedom), n (measured rows), low/high (censored rows),
    tobit (whether censored rows entered the fit)."""
    log_opt = np.asarray(log_opt, float)
    code = np.asarray(code)
    lead, R = log_opt.shape[:-1], log_opt.shape[-1]
    y = log_opt.reshape(-1, R)
    cd = code.reshape(-1, R)
    x = np.broadcast_to(np.asarray(log_lr, float), log_opt.shape).reshape(-1, R)
    D = y.shape[0]
    fin = np.isfinite(y)
    unc, hi, lo = fin & (cd == 0), fin & (cd == 1), fin & (cd == -1)
    n = unc.sum(-1)
    w = unc.astype(float)
    with np.errstate(all="ignore"):
        x0 = (w * x).sum(-1) / n
        xc = np.where(fin, x - x0[:, None], 0.0)
        ym = (w * np.where(unc, y, 0.0)).sum(-1) / n
        dx, dy = xc * w, (np.where(unc, y, 0.0) - ym[:, None]) * w
        sxx = (dx ** 2).sum(-1)
        b = (dx * dy).sum(-1) / sxx
        rss = ((dy - b[:, None] * dx) ** 2).sum(-1)
        s2 = rss / (n - 2)
    a = ym
    cov = np.full((D, 2, 2), np.nan)
    ok3 = n >= 3
    cov[ok3, 0, 0] = s2[ok3] / n[ok3]
    cov[ok3, 1, 1] = s2[ok3] / sxx[ok3]
    cov[ok3, 0, 1] = cov[ok3, 1, 0] = 0.0
    cens = (hi | lo).any(-1)
    exact = (n == 2) | (rss <= 1e-20 * np.maximum(1.0, (w * np.where(unc, y, 0.0) ** 2).sum(-1)))
    with np.errstate(invalid="ignore"):
        line = a[:, None] + b[:, None] * xc        # an exact line that respects every bound is the likelihood's
        kept = ~(hi & (line < upper)).any(-1) & ~(lo & (line > lower)).any(-1)  # maximum (s → 0)
    tob = (n >= 2) & cens & ~(exact & kept)
    if tob.any():
        coef, c2 = _tobit(xc[tob], y[tob], unc[tob], hi[tob], lo[tob], upper, lower)
        a[tob], b[tob] = coef[:, 0], coef[:, 1]
        with np.errstate(all="ignore"):
            cov[tob] = np.where((n[tob] >= 3)[:, None, None], c2 * (n[tob] / (n[tob] - 2))[:, None, None], np.nan)
    b = np.where(n >= 2, b, np.nan)
    a = np.where(n >= 2, a, np.nan)
    shape = lambda v: v.reshape(lead + v.shape[1:])  # noqa: E731
    return {"slope": shape(b), "x0": shape(x0), "a": shape(a), "cov": shape(cov), "dof": shape(np.maximum(n - 2, 0)),
            "n": shape(n), "low": shape(lo.sum(-1)), "high": shape(hi.sum(-1)), "tobit": shape(tob)}


def slope_intervals(lr, wd, per_seed, level: float = LEVEL) -> dict:
    """Everything the slope rests on, vectorized: per_seed[..., seed, row, col] errors (NaN = diverged).

    Returns fit_ridge's arrays plus log_opt and code per row and the interval lo/hi of the slope."""
    per_seed = np.asarray(per_seed, float)
    mean = _nanmean(per_seed, axis=-3)
    log_wd = np.log(np.asarray(wd, float))
    log_opt, code = row_optima(log_wd, mean)
    fit = fit_ridge(np.log(np.asarray(lr, float)), log_opt, code, log_wd[0], log_wd[-1])
    half = _tq(fit["dof"], level) * np.sqrt(fit["cov"][..., 1, 1])
    fit.update(log_opt=log_opt, code=code, lo=fit["slope"] - half, hi=fit["slope"] + half)
    return fit


def _method(fit: dict, seeds: int, rows: int) -> str:
    n, dof = int(fit["n"]), int(fit["dof"])
    k = int(fit["low"]) + int(fit["high"])
    seeds_txt = f"{seeds} seeds averaged" if seeds > 1 else "one seed"
    if n < 3:
        return f"no interval: {n} of {rows} rows measured inside the grid ({seeds_txt})"
    if k:
        return (f"t-interval ({dof} dof), censored-normal fit: {n} rows measured, {k} beyond the grid edge "
                f"as bounds ({seeds_txt})")
    return f"t-interval ({dof} dof) on the ridge of {n} rows ({seeds_txt})"


def slope_with_ci(lr, wd, per_seed: np.ndarray, n_boot=None, rng=None) -> tuple[float, list[float], str]:
    """Slope of log λ*(η) on log η, its 95 % interval and how it was made. per_seed: [seed][row][col] errors.
    (n_boot and rng are accepted for old callers; the interval is analytic.)"""
    f = slope_intervals(lr, wd, per_seed)
    return float(f["slope"]), [float(f["lo"]), float(f["hi"])], _method(f, per_seed.shape[0], per_seed.shape[1])


# --------------------------------------------------------------------------- arm landscapes

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


def arm_landscape(members: list[dict], n_boot=None, metric: str = "error") -> ArmLandscape:
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
    f = slope_intervals(np.array(lr), np.array(wd), per_seed)
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
                 "censored_rows_as_bounds": bool(f["tobit"])}
    return ArmLandscape(opt, decay, [float(v) for v in lr], [float(v) for v in wd], mean.tolist(),
                        diverged_frac.tolist(), seeds,
                        [float(math.exp(v)) if math.isfinite(v) else math.nan for v in f["log_opt"]],
                        float(f["slope"]), [float(f["lo"]), float(f["hi"])], method, best, grid,
                        [] if grid else [{k: m[k] for k in ("lr", "weight_decay", "error", "diverged")} for m in members],
                        [CENSOR_CODE[int(c)] for c in f["code"]], ridge_fit, metric)


def landscapes(members: list[dict], n_boot=None, metric: str = "error") -> list[ArmLandscape]:
    """One landscape per arm, ordered by optimizer, then coupled, decoupled, independent.
    `metric` names what members' `error` holds (e.g. test_loss); n_boot is accepted for old callers."""
    arms: dict[tuple, list[dict]] = {}
    for m in members:
        arms.setdefault((m["optimizer"], m["decay"]), []).append(m)
    order = {"coupled": 0, "decoupled": 1, "independent": 2}
    keys = sorted(arms, key=lambda k: (k[0], order.get(k[1], 3)))
    return [arm_landscape(arms[k], metric=metric) for k in keys]


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
    """What search.refine trains: refine_weight_decays, less any λ whose decay factor would not stay positive."""
    cap = max_weight_decay(land)
    return [w for w in refine_weight_decays(land, max_steps) if w < cap]


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
        raise ValueError(f"invalid --lr: {lr:g} is outside the learning rates where {land.arm}'s ridge was measured "
                         f"[{lo_lr:.3g}, {hi_lr:.3g}]; no extrapolation")
    m, lo, hi = (float(v[0]) for v in predict_log_wd(land, [lr], level))
    wd, wd_lo, wd_hi = math.exp(m), math.exp(lo) if math.isfinite(lo) else math.nan, \
        math.exp(hi) if math.isfinite(hi) else math.nan
    independent = land.decay == "independent"
    return {"arm": land.arm, "lr": lr, "weight_decay": wd, "weight_decay_ci": [wd_lo, wd_hi],
            "lr_x_weight_decay": lr * wd, "timescale_steps": decay_timescale(land.decay, lr, wd),
            "timescale_rule": "1/λ" if independent else "1/(η·λ)", "lr_range": [lo_lr, hi_lr],
            "rows": len(rows), "level": level}


# --------------------------------------------------------------------------- verdicts

def _fmt(v, fmt=".2f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def _rows_needed(n: int, hw: float, target: float, dof: int) -> int | None:
    """Evenly spread rows over the same lr range that would bring the half-width to `target`."""
    if n < 3:
        return None
    sxx = lambda k: k * (k + 1) / (k - 1)  # noqa: E731  Σ(x−x̄)² of k evenly spaced points, up to the range²
    t_now = float(_tq(dof))
    for k in range(n + 1, 65):
        if hw * float(_tq(k - 2)) / t_now * math.sqrt(sxx(n) / sxx(k)) <= target:
            return k
    return None


def arm_verdict(land: ArmLandscape) -> dict:
    """One of: consistent with the prediction, contradicts it, inconclusive at this budget (and what would
    decide it), or no prediction (SCIENCE.md states no law for the arm)."""
    pred, pred_text = land.predicted
    lo, hi = land.slope_ci
    s = land.slope
    measured = [c for c, w in zip(land.censored, land.best_weight_decay) if math.isfinite(w)]
    k = sum(c is not None for c in measured)
    n = len(measured) - k
    S = len(land.seeds)
    alt = ALTERNATIVE.get(pred) if pred is not None else None
    out = {"arm": land.arm, "predicted": pred, "alternative": alt, "slope": s, "ci": [lo, hi],
           "offset": (s - pred) if pred is not None else math.nan, "rows_measured": n, "rows_censored": k,
           "decide": []}
    ci = f"slope {_fmt(s)} [{_fmt(lo)}, {_fmt(hi)}]"
    edge = f"; {k} of {n + k} rows have their best λ beyond the grid edge" if k else ""
    if pred is None:
        out.update(outcome="no prediction", text=f"no prediction to test ({pred_text}); {ci}{edge}")
        return out
    if not (math.isfinite(lo) and math.isfinite(hi)):
        decide = ["a wider weight_decay grid"] if k else []
        decide.append(f"more learning rates (only {n} rows measured; an interval needs 3)")
        out.update(outcome="inconclusive", decide=decide,
                   text=f"inconclusive at this budget: {ci}{edge}; what would decide it: " + ", ".join(decide))
        return out
    if not lo <= pred <= hi:
        note = ": refine the grid to confirm" if k else ""
        out.update(outcome="contradicts",
                   text=f"contradicts it: {ci} excludes the predicted {pred:g}{edge}{note}")
        return out
    if alt is None or not lo <= alt <= hi:
        other = f" and excludes {alt:g}" if alt is not None else ""
        out.update(outcome="consistent", text=f"consistent with the prediction: {ci} holds {pred:g}{other}{edge}")
        return out
    target = abs(pred - alt) / 2      # a half-width that separates the two laws
    hw = (hi - lo) / 2
    decide = []
    if k:
        decide.append(f"a wider weight_decay grid ({k} of {n + k} rows beyond its edge)")
    seeds = math.ceil(S * (hw / target) ** 2)
    decide.append(f"about {seeds} seeds (now {S})" if seeds <= MAX_SEEDS_ADVICE else f"more than {MAX_SEEDS_ADVICE} seeds (now {S})")
    rows = _rows_needed(n, hw, target, n - 2)
    decide.append(f"or about {rows} learning rates (now {n})" if rows else "or a wider learning-rate range")
    out.update(outcome="inconclusive", decide=decide,
               text=f"inconclusive at this budget: {ci} holds both {pred:g} and {alt:g}; what would decide it "
                    f"(interval ±{target:g}): " + ", ".join(decide))
    return out


def _same_rows(a: ArmLandscape, b: ArmLandscape) -> bool:
    return len(a.lr) == len(b.lr) and np.allclose(a.lr, b.lr, rtol=1e-9)


def difference_interval(log_lr, opt_a, code_a, fit_a: dict, opt_b, code_b, fit_b: dict, same_rows: bool = True,
                        level: float = LEVEL) -> dict:
    """Slope difference a − b and its interval, vectorized over leading dims (rows last).

    Paired (same rows, nothing censored in either arm, ≥ 3 rows measured in both): the least-squares
    slope of the row-wise differences, t with n−2 dof; shared noise cancels. Otherwise the two fits as
    independent, Welch–Satterthwaite dof."""
    diff = fit_a["slope"] - fit_b["slope"]
    va, vb = fit_a["cov"][..., 1, 1], fit_b["cov"][..., 1, 1]
    with np.errstate(all="ignore"):
        dof_w = (va + vb) ** 2 / (va ** 2 / fit_a["dof"] + vb ** 2 / fit_b["dof"])
        half_w = _tq(np.where(np.isfinite(dof_w), dof_w, 0), level) * np.sqrt(va + vb)
    paired = np.zeros(np.shape(diff), bool)
    half = half_w
    d = diff
    if same_rows:
        both = np.isfinite(opt_a) & np.isfinite(opt_b)
        clean = ~(((code_a != 0) | (code_b != 0)) & both).any(-1)
        y = np.where(both, opt_a - opt_b, np.nan)
        fp = fit_ridge(log_lr, y, np.zeros_like(code_a), -np.inf, np.inf)
        paired = clean & (fp["n"] >= 3)
        half_p = _tq(fp["dof"], level) * np.sqrt(fp["cov"][..., 1, 1])
        d = np.where(paired, fp["slope"], diff)
        half = np.where(paired, half_p, half_w)
    return {"difference": d, "lo": d - half, "hi": d + half, "paired": paired}


def compare_arms(lands: list[ArmLandscape], level: float = LEVEL) -> list[dict]:
    """Every pair of arms: the difference of slopes with a joint interval, its prediction and one sentence."""
    out = []
    for i, A in enumerate(lands):
        for B in lands[i + 1:]:
            fa, fb = _fit_dict(A), _fit_dict(B)
            same = _same_rows(A, B)
            r = difference_interval(np.log(A.lr), fa["log_opt"], fa["code"], fa, fb["log_opt"], fb["code"], fb,
                                    same_rows=same, level=level)
            d, lo, hi, paired = float(r["difference"]), float(r["lo"]), float(r["hi"]), bool(r["paired"])
            pa, pb = A.predicted[0], B.predicted[0]
            pd = (pa - pb) if pa is not None and pb is not None else None
            shared = sorted(set(A.seeds) & set(B.seeds))
            if paired:
                method = (f"paired over {int(np.isfinite(fa['log_opt'] - fb['log_opt']).sum())} shared learning rates"
                          + (f" ({'seeds' if len(shared) > 1 else 'seed'} {', '.join(map(str, shared))} shared: "
                             f"their common noise cancels)" if shared else ""))
            else:
                why = "different learning rates" if not same else "censored rows"
                method = f"the two fits combined as independent ({why})"
            name = f"{A.arm} − {B.arm}"
            if not (math.isfinite(lo) and math.isfinite(hi)):
                outcome, text = "inconclusive", f"{name}: slope difference {_fmt(d, '+.2f')}, no interval at this budget"
            else:
                ci = f"{_fmt(d, '+.2f')} [{_fmt(lo, '+.2f')}, {_fmt(hi, '+.2f')}]"
                pred_txt = ""
                if pd is not None:
                    pred_txt = (f"; holds the predicted {pd:+g}" if lo <= pd <= hi else f"; excludes the predicted {pd:+g}")
                if lo > 0 or hi < 0:
                    outcome = "differ"
                    text = f"{name}: slope difference {ci} excludes 0: λ*(η) moves differently in the two arms{pred_txt}"
                else:
                    outcome = "no difference detected"
                    text = f"{name}: slope difference {ci} holds 0: no difference detected at this budget{pred_txt}"
            out.append({"arms": [A.arm, B.arm], "difference": d, "ci": [lo, hi], "predicted_difference": pd,
                        "method": method, "outcome": outcome, "text": text})
    return out


def _fit_dict(land: ArmLandscape) -> dict:
    """The arm's fit as slope_intervals-style arrays (for difference_interval)."""
    f = land.ridge_fit or {}
    code = np.array([{None: 0, "low": -1, "high": 1}[c] for c in (land.censored or [None] * len(land.lr))])
    opt = np.log(np.array(land.best_weight_decay, float))
    cov = np.array(f.get("cov", [[math.nan] * 2] * 2), float)
    return {"slope": np.array(land.slope), "cov": cov, "dof": np.array(f.get("dof", 0)), "log_opt": opt, "code": code}


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
    difference and its interval. Finite values only; names valid for MLflow."""
    out = {}
    for L in lands:
        a = _key(L.arm)
        vals = {"slope": L.slope, "ci_low": L.slope_ci[0], "ci_high": L.slope_ci[1], "best_lr": L.best["lr"],
                "best_weight_decay": L.best["weight_decay"], f"best_{_key(L.metric)}": L.best["error"],
                "rows_censored": float(sum(c is not None for c in L.censored))}
        out.update({f"{a}.{k}": float(v) for k, v in vals.items() if isinstance(v, (int, float)) and math.isfinite(v)})
    for p in compare_arms(lands):
        a = f"{_key(p['arms'][0])}_minus_{_key(p['arms'][1])}"
        for k, v in (("slope_difference", p["difference"]), ("ci_low", p["ci"][0]), ("ci_high", p["ci"][1])):
            if math.isfinite(v):
                out[f"{a}.{k}"] = float(v)
    return out


def verdict_tags(lands: list[ArmLandscape]) -> dict[str, str]:
    """Tags for the MLflow parent run: verdict.<arm> (outcome: sentence) and verdict.<a>_minus_<b>."""
    out = {}
    for v in (arm_verdict(L) for L in lands):
        out[f"verdict.{_key(v['arm'])}"] = v["text"][:5000]
    for p in compare_arms(lands):
        out[f"verdict.{_key(p['arms'][0])}_minus_{_key(p['arms'][1])}"] = p["text"][:5000]
    return out
