"""The valley model: the slope of λ*(η) from every cell near the valley floor, not from one vertex per row.

A landscape near its best weight decay is a valley whose floor runs along the ridge log λ*(η) = a + b·(x − x0),
x = log η. In each learning-rate row r the seed-averaged metric is modelled as

    m[r, c] = f_r + k_r · (log λ_c − a − b·(x_r − x0))²  +  noise,        k_r ≥ 0,

fitted by least squares to the cells within `HALF_WINDOW` columns of the row's best cell. Every row has its own
height f_r and curvature k_r (so an offset shared by all cells of a seed, or a row that is higher or flatter than the
next, costs nothing); only the floor's line (a, b) is shared. For fixed (a, b) each row is an ordinary
linear regression on [1, (log λ − v_r)²], solved in closed form, so the model's residual sum of squares is a
function of (a, b) alone.

Why this and not the row vertices: a quadratic through five cells of one row gives one number with a few
cells' worth of noise, and the line through R such numbers has R − 2 degrees of freedom (3 for five rows:
t = 3.18). The valley fit keeps every cell: N cells, 2R + 2 parameters, ν = N − 2R − 2 residual degrees of
freedom, and rows whose best cell sits at a grid edge still inform the line through the cells they have
(their own optimum is not claimed; see landscape.row_optima).

The 95 % interval of b is the profile-likelihood interval of nonlinear least squares:
{b : RSS_p(b) − RSS_min ≤ t²(ν) · RSS_min / ν}, with RSS_p(b) = min over a of RSS(a, b). The profile is
evaluated on a grid of b (step `B_STEP` over `B_RANGE`; at each b, a coarse grid of a then a golden-section search),
its minimum refined by golden-section search and each crossing by bisection; an interval that reaches the
end of the range is unbounded on that side (the data do not bound the slope). tests/test_valley.py checks
its coverage on planted landscapes of shapes the model does not assume (lopsided valleys, seed offsets,
rows censored at either edge) and keeps its known limit, a floor that wobbles seed by seed, as a strict
expected failure.

Pure numpy (scipy for the t quantile); batched over any number of landscapes for the calibration tests.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95
HALF_WINDOW = 2                       # cells used per row: the best column and up to 2 on each side
B_RANGE = (-4.0, 3.0)                 # slopes searched (predictions are −1 and 0)
B_STEP = 0.1                          # the profile's grid; the minimum and the crossings are then refined
A_POINTS = 49                         # coarse grid of the ridge's height a over the weight-decay range ± 3 columns
A_ITERS = 25                          # golden-section steps in a between the coarse grid's neighbours


def _window(mean: np.ndarray, half: int) -> np.ndarray:
    """mask[..., r, c]: the finite cells within `half` columns of each row's best finite cell."""
    fin = np.isfinite(mean)
    best = np.argmin(np.where(fin, mean, np.inf), axis=-1)
    cols = np.arange(mean.shape[-1])
    near = np.abs(cols - best[..., None]) <= half
    return fin & near & fin.any(-1, keepdims=True)


def _rss(v, y, m, w):
    """Per-row least squares of m on [1, (y − v)²] with a non-negative curvature; returns each row's RSS.

    v: (..., R) the floor's position per row; y: (C,) log λ; m, w: (..., R, C) cells and their weights (0 leaves
    a cell out)."""
    z = (y - v[..., None]) ** 2
    n = np.where(w.sum(-1) > 0, w.sum(-1), 1.0)
    zc = z - (w * z).sum(-1, keepdims=True) / n[..., None]
    mc = m - (w * m).sum(-1, keepdims=True) / n[..., None]
    szz = (w * zc * zc).sum(-1)
    szm = (w * zc * mc).sum(-1)
    smm = (w * mc * mc).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(szz > 0, szm / szz, 0.0)
    return smm - np.where(k > 0, k * szm, 0.0)


def _total(xc, y, M, W, a, b):
    """The model's RSS for the line (a, b): a, b of shape (D,)."""
    return _rss(a[:, None] + b[:, None] * xc, y, M, W).sum(-1)


def _profile(xc, y, M, W, b, a_grid):
    """RSS_p(b) = min over a of RSS(a, b), and the a that attains it, for one slope per landscape b (D,):
    the best point of a coarse grid of a, then golden-section search between its two neighbours on the grid.

    The RSS is not smooth in a (each row's curvature is clipped at 0, and cells enter and leave a row's fit
    as its floor moves), so derivative steps can stall on a kink and report a profile far above its true
    value; a bracketing search cannot (tests/test_valley.py keeps such a landscape)."""
    v = a_grid[None, :, None] + b[:, None, None] * xc[:, None, :]               # (D, A, R)
    rss = _rss(v, y, M[:, None], W[:, None]).sum(-1)                             # (D, A)
    j = np.argmin(rss, -1)
    lo = a_grid[np.clip(j - 1, 0, len(a_grid) - 1)]
    hi = a_grid[np.clip(j + 1, 0, len(a_grid) - 1)]
    a = _golden(lambda a: _total(xc, y, M, W, a, b), lo, hi, iters=A_ITERS)
    f = _total(xc, y, M, W, a, b)
    grid_best = rss[np.arange(len(j)), j]
    keep_grid = grid_best < f
    return np.where(keep_grid, grid_best, f), np.where(keep_grid, a_grid[j], a)


def valley_fit(log_lr, log_wd, mean, level: float = LEVEL, half_window: int = HALF_WINDOW) -> dict:
    """The valley model fitted to seed-averaged grids mean[..., row=lr, col=wd] (NaN: every seed diverged).

    Returns arrays over the leading dims: slope b, lo/hi (its profile interval; ±inf where the data do not
    bound it, NaN where there is no fit), a and x0 (the line log λ* = a + b·(log η − x0)), cov (2×2 of a, b
    from the curvature of the RSS at the minimum, for predictions along the line), dof ν, cells N, rows
    (rows with ≥ 3 cells), s2 (residual variance)."""
    from scipy import stats

    x = np.asarray(log_lr, float)
    y = np.asarray(log_wd, float)
    mean = np.asarray(mean, float)
    lead = mean.shape[:-2]
    R, C = mean.shape[-2:]
    M = mean.reshape(-1, R, C)
    D = M.shape[0]
    W = _window(M, half_window).astype(float)
    rows_ok = W.sum(-1) >= 3
    W = W * rows_ok[..., None]
    cells = W.sum((-1, -2))
    M = np.where(W > 0, M, 0.0)
    n_rows = rows_ok.sum(-1)
    dof = cells - 2 * n_rows - 2
    x0 = np.where(n_rows > 0, (rows_ok * x).sum(-1) / np.maximum(n_rows, 1), x.mean())
    xc = x[None, :] - x0[:, None]                                                # (D, R)
    step_y = float(np.mean(np.diff(y))) if C > 1 else 1.0
    a_grid = np.linspace(y[0] - 3 * step_y, y[-1] + 3 * step_y, A_POINTS)
    b_grid = np.arange(B_RANGE[0], B_RANGE[1] + B_STEP / 2, B_STEP)
    prof = lambda b: _profile(xc, y, M, W, b, a_grid)  # noqa: E731

    # the profile on the grid of slopes, then its minimum refined by golden-section search between the
    # grid points beside the best one
    grid = np.stack([prof(np.full(D, b))[0] for b in b_grid], -1)                # (D, B)
    jb = np.argmin(grid, -1)
    lo_b = b_grid[np.clip(jb - 1, 0, len(b_grid) - 1)]
    hi_b = b_grid[np.clip(jb + 1, 0, len(b_grid) - 1)]
    slope = _golden(lambda b: prof(b)[0], lo_b, hi_b)
    rss_min, a_hat = prof(slope)
    better = grid[np.arange(D), jb] < rss_min
    slope = np.where(better, b_grid[jb], slope)
    rss_min, a_hat = prof(slope)

    ok = (dof >= 1) & (n_rows >= 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        s2 = np.where(ok, rss_min / np.maximum(dof, 1), np.nan)
        tq = np.where(ok, stats.t.ppf(0.5 + level / 2, np.maximum(dof, 1)), np.nan)
        limit = rss_min + tq ** 2 * s2
    lo = _crossing(prof, b_grid, grid, slope, limit, -1)
    hi = _crossing(prof, b_grid, grid, slope, limit, +1)
    lo, hi = np.where(ok, lo, np.nan), np.where(ok, hi, np.nan)
    cov = _line_cov(xc, y, M, W, a_hat, slope, s2)
    slope = np.where(n_rows >= 2, slope, np.nan)
    shape = lambda v: v.reshape(lead + v.shape[1:])  # noqa: E731
    return {"slope": shape(slope), "lo": shape(lo), "hi": shape(hi), "a": shape(np.where(n_rows >= 2, a_hat, np.nan)),
            "x0": shape(x0), "cov": shape(cov), "dof": shape(np.maximum(dof, 0)), "cells": shape(cells),
            "rows": shape(n_rows), "s2": shape(s2)}


def _golden(f, lo, hi, iters: int = 30):
    """Batched golden-section search for the minimum of f on [lo, hi]."""
    g = (np.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        left = fc < fd
        hi, lo = np.where(left, d, hi), np.where(left, lo, c)
        c_new, d_new = hi - g * (hi - lo), lo + g * (hi - lo)
        c, d = np.where(left, c_new, d), np.where(left, c, d_new)
        f_new = f(np.where(left, c, d))
        fc, fd = np.where(left, f_new, fd), np.where(left, fc, f_new)
    return (lo + hi) / 2


def _crossing(prof, b_grid, grid, b_hat, limit, direction: int, iters: int = 30):
    """Where the profile rises through `limit` on one side of b_hat: the first grid slope beyond b_hat whose
    profile exceeds the limit brackets it, then bisection on the profile. ±inf where the profile stays below
    the limit to the end of the range (the data do not bound the slope on that side)."""
    beyond = (b_grid[None, :] - b_hat[:, None]) * direction > 0
    above = beyond & (grid > limit[:, None])
    order = b_grid if direction > 0 else -b_grid
    key = np.where(above, order[None, :], np.inf)
    found = np.isfinite(key).any(-1)
    outer = b_grid[np.argmin(key, -1)]
    inner = b_hat.copy()
    for _ in range(iters):
        mid = (inner + outer) / 2
        up = prof(mid)[0] > limit
        outer, inner = np.where(up, mid, outer), np.where(up, inner, mid)
    edge = -np.inf if direction < 0 else np.inf
    exact = ~(limit > prof(b_hat)[0])            # an exact fit: the interval is the point
    return np.where(exact, b_hat, np.where(found, (inner + outer) / 2, edge))


def _line_cov(xc, y, M, W, a, b, s2, h: float = 1e-3):
    """Covariance of (a, b): 2·s²·H⁻¹ with H the finite-difference Hessian of the total RSS at (a, b)."""
    def total(da, db):
        return _total(xc, y, M, W, a + da, b + db)

    f0 = total(0, 0)
    haa = (total(h, 0) - 2 * f0 + total(-h, 0)) / h ** 2
    hbb = (total(0, h) - 2 * f0 + total(0, -h)) / h ** 2
    hab = (total(h, h) - total(h, -h) - total(-h, h) + total(-h, -h)) / (4 * h ** 2)
    H = np.stack([np.stack([haa, hab], -1), np.stack([hab, hbb], -1)], -2)
    cov = np.full(H.shape, np.nan)
    good = np.isfinite(H).all((-1, -2)) & (np.linalg.det(np.nan_to_num(H)) > 0) & np.isfinite(s2)
    if good.any():
        cov[good] = 2 * s2[good, None, None] * np.linalg.inv(H[good])
    return cov
