"""Static figures of landscapes with matplotlib: heatmaps (Loshchilov & Hutter Fig. 2 style), ridge, collapse.

Owns drawing only: takes ArmLandscape objects, returns matplotlib figures. Reads no store.
"""

from __future__ import annotations

import logging
import math

import matplotlib

matplotlib.use("Agg")
# mathtext looks for the STIX and Computer Modern families and falls back to DejaVu, logging ~20 "findfont" lines
# per export on machines without them: noise, the figures are the same
logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402

from .landscape import ArmLandscape, fmt_number, predict_log_wd, row_best_cells  # noqa: E402
from .spec import shown  # noqa: E402

DECAY_LABEL = {
    "coupled": "weight decay λ, coupled (L2: g ← g + λ·w)",
    "decoupled": "weight decay λ, decoupled (w ← w·(1 − η_t·λ))",
    "independent": "weight decay λ, independent (w ← w·(1 − s_t·λ))",
}


def _edges(values) -> np.ndarray:
    """Cell edges on a log axis: geometric midpoints, extended half a step at both ends."""
    v = np.log(np.asarray(values, float))
    if len(v) == 1:
        return np.exp(np.array([v[0] - 0.5, v[0] + 0.5]))
    mid = (v[1:] + v[:-1]) / 2
    return np.exp(np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]]))


def _fmt_ci(land: ArmLandscape) -> str:
    lo, hi = land.slope_ci
    if not math.isfinite(land.slope):
        return "slope n/a"
    ci = f" [{fmt_number(lo)}, {fmt_number(hi)}]" if math.isfinite(lo) or math.isfinite(hi) else ""
    return f"slope {fmt_number(land.slope)}{ci}"


def error_range(lands: list[ArmLandscape]) -> tuple[float, float]:
    """The shared colour limits: the minimum and a robust maximum (the 90th percentile above 10 values)."""
    vals = _finite_values(lands)
    if not len(vals):
        return 0.0, 1.0
    return float(vals.min()), float(np.quantile(vals, 0.9)) if len(vals) > 10 else float(vals.max())


def _finite_values(lands: list[ArmLandscape]) -> np.ndarray:
    vals = np.array([v for L in lands for row in L.error for v in row], float)
    return vals[np.isfinite(vals)]


def color_extend(lands: list[ArmLandscape], lo: float, hi: float) -> str:
    """matplotlib's colorbar `extend`: which ends of the colour scale clip values ("neither", "min", "max", "both")."""
    vals = _finite_values(lands)
    below, above = bool((vals < lo).any()), bool((vals > hi).any())
    return {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[below, above]


def grid_labels(values) -> list[str]:
    """One label per grid value, spelled as params, run names and the terminal spell it (spec.shown)."""
    return [shown(v) for v in values]


def thin(labels: list[str], most: int = 12) -> list[str]:
    """Every label up to `most` values; beyond that every k-th (the others blank, their ticks kept)."""
    k = math.ceil(len(labels) / most)
    return [t if i % k == 0 else "" for i, t in enumerate(labels)]


def _grid_ticks(ax, land: ArmLandscape) -> None:
    """Ticks at every grid value of λ (x) and η (y), labelled as every output spells them (Loshchilov & Hutter label every cell)."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    for axis, values in ((ax.xaxis, land.weight_decay), (ax.yaxis, land.lr)):
        axis.set_major_locator(FixedLocator(list(values)))
        axis.set_major_formatter(FixedFormatter(thin(grid_labels(values))))
        axis.set_minor_locator(NullLocator())
    many = len(land.weight_decay) > 6
    ax.tick_params(axis="x", labelsize=7 if many else 8, labelrotation=45 if many else 0)
    ax.tick_params(axis="y", labelsize=7 if len(land.lr) > 8 else 8)
    if many:
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
            t.set_rotation_mode("anchor")


def heatmap_panel(ax, land: ArmLandscape, norm: Normalize, cmap="viridis", top: int = 10):
    err = np.array(land.error, float)                 # [lr][wd]
    div = np.array(land.diverged, float)
    mesh = ax.pcolormesh(_edges(land.weight_decay), _edges(land.lr), np.ma.masked_invalid(err),
                         norm=norm, cmap=cmap, shading="flat")
    # diverged cells: grey with a cross, never a number
    for r in range(err.shape[0]):
        for c in range(err.shape[1]):
            if not math.isfinite(err[r, c]) and div[r, c] > 0:
                ax.plot(land.weight_decay[c], land.lr[r], marker="x", color="0.35", ms=9, mew=2)
    ax.set_facecolor("0.85")
    finite = [(err[r, c], r, c) for r in range(err.shape[0]) for c in range(err.shape[1]) if math.isfinite(err[r, c])]
    for _, r, c in sorted(finite)[:top]:                # the 10 best settings, circled
        ax.plot(land.weight_decay[c], land.lr[r], "o", mfc="none", mec="white", ms=13, mew=1.6)
    censored = land.censored or [None] * len(land.lr)
    cells = row_best_cells(land) if land.grid else []
    if cells:                                           # the observed best cell of each row: squares
        ax.plot([land.weight_decay[c] for _, c in cells], [land.lr[r] for r, _ in cells], "s", ls="none",
                mfc="none", mec="crimson", ms=10, mew=2, label="best cell of each row (measured)")
    for side, marker in (("high", ">"), ("low", "<")):  # rows whose best cell is an edge column: open arrows
        rows = [lr for lr, c in zip(land.lr, censored) if c == side]
        if rows:
            edge = land.weight_decay[-1] if side == "high" else land.weight_decay[0]
            ax.plot([edge] * len(rows), rows, marker, ls="none", mfc="none", mec="crimson", ms=14, mew=1.2,
                    label=f"best at the {side} edge: optimum not bracketed")
    if math.isfinite(land.slope):                       # the fitted ridge of the valley model
        xs = np.geomspace(min(land.lr), max(land.lr), 30)
        ys = np.exp(predict_log_wd(land, xs)[0])
        ax.plot(ys, xs, "--", color="white", lw=1.6, label=f"fitted ridge (valley model), slope {land.slope:.2f}")
    ax.set_xlim(*_edges(land.weight_decay)[[0, -1]])
    ax.set_ylim(*_edges(land.lr)[[0, -1]])
    if cells or math.isfinite(land.slope):
        ax.legend(fontsize=6.5, loc="lower left", framealpha=0.75, facecolor="0.6")
    if not land.grid and land.samples:
        s = land.samples
        ax.scatter([m["weight_decay"] for m in s], [m["lr"] for m in s],
                   c=[m["error"] if not m["diverged"] else np.nan for m in s], norm=norm, cmap=cmap,
                   edgecolors="k", linewidths=0.6, s=22, zorder=3, plotnonfinite=True)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _grid_ticks(ax, land)                               # after set_*scale, which resets the locators
    ax.set_xlabel(DECAY_LABEL.get(land.decay, "weight decay λ"))
    ax.set_ylabel("learning rate η")
    ax.set_title(f"{land.optimizer.upper()} + {land.decay}: {_fmt_ci(land)}", fontsize=10)
    return mesh


def heatmaps(lands: list[ArmLandscape], title: str = "", metric: str = "test_error", columns: int = 2):
    """One panel per arm with one shared colour scale, as in Loshchilov & Hutter Fig. 2."""
    n = len(lands)
    cols = max(1, min(columns, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.3 * rows), squeeze=False, layout="constrained")
    lo, hi = error_range(lands)
    norm = Normalize(lo, hi if hi > lo else lo + 1e-6)
    extend = color_extend(lands, norm.vmin, norm.vmax)
    mesh = None
    for ax, land in zip(axes.flat, lands):
        mesh = heatmap_panel(ax, land, norm)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if mesh is not None:
        label = f"final {metric.replace('_', ' ')} (mean over seeds)"
        if extend in ("max", "both"):                   # the robust upper limit clips: say so, and draw the arrow
            label += f"; arrow: ≥ {norm.vmax:.3g}"
        fig.colorbar(mesh, ax=axes, label=label, shrink=0.9, extend=extend)
    fig.suptitle(title or f"Final {metric.replace('_', ' ')} over (λ, η); circles: 10 best; red: best λ per learning rate",
                 fontsize=11)
    return fig


def ridge_figure(lands: list[ArmLandscape], title: str = "", metric: str = "test_error", columns: int = 2):
    """log λ*(η) against log η for all arms, with fitted slopes, 95 % intervals and docs/science.md's predictions."""
    fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
    for i, land in enumerate(lands):
        color = f"C{i}"
        lr = np.array(land.lr)
        opt = np.array(land.best_weight_decay, float)
        cens = np.array([c or "" for c in (land.censored or [None] * len(lr))])
        ok = np.isfinite(opt) & (cens == "")
        pred = land.predicted[1]
        ax.plot(lr[ok], opt[ok], "o", color=color, label=f"{land.arm}: λ*(η) per row")
        for side, marker in (("high", "^"), ("low", "v")):   # beyond the grid: open arrows at the edge (a bound)
            m = np.isfinite(opt) & (cens == side)
            if m.any():
                ax.plot(lr[m], opt[m], marker, color=color, mfc="none", ms=9, mew=1.8,
                        label=f"{land.arm}: best λ beyond the {side} edge (bound)")
        if math.isfinite(land.slope):
            xs = np.geomspace(lr[np.isfinite(opt)].min(), lr[np.isfinite(opt)].max(), 30)
            mean, lo, hi = predict_log_wd(land, xs)
            ax.plot(xs, np.exp(mean), "-", color=color, lw=1.5,
                    label=f"{land.arm} fitted ridge: {_fmt_ci(land)} (predicted {pred})")
            if np.isfinite(lo).all():
                ax.fill_between(xs, np.exp(lo), np.exp(hi), color=color, alpha=0.12, lw=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    lrs = [v for L in lands for v in L.lr]
    wds = [v for L in lands for v in L.weight_decay]
    ax.set_xlim(min(lrs) / 1.5, max(lrs) * 1.5)   # explicit limits: an arm without any finite optimum
    ax.set_ylim(min(wds) / 1.5, max(wds) * 1.5)   # still gets a drawable log axis
    ax.set_xlabel("learning rate η")
    ax.set_ylabel("best weight decay λ*(η) (each arm's own λ)")
    ax.legend(fontsize=8, loc="best")
    ax.set_title((title or "How the best weight decay moves with the learning rate") +
                 "\nbands: 95 % interval of the fitted line; open triangles: best λ beyond the grid edge (a bound)",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def collapse_figure(lands: list[ArmLandscape], title: str = "", metric: str = "test_error", columns: int = 2):
    """Error against η·λ (coupled, decoupled) or λ (independent): one curve per learning rate."""
    n = len(lands)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.8), squeeze=False, layout="constrained")
    for ax, land in zip(axes.flat, lands):
        err = np.array(land.error, float)
        cmap = plt.get_cmap("plasma")
        for r, lr in enumerate(land.lr):
            x = np.array(land.weight_decay) * (lr if land.decay != "independent" else 1.0)
            ax.plot(x, err[r], "-o", ms=3, color=cmap(r / max(1, len(land.lr) - 1)), label=f"η={shown(lr)}")
        ax.set_xscale("log")
        scale = np.array(land.lr) if land.decay != "independent" else np.ones(len(land.lr))
        ax.set_xlim(min(land.weight_decay) * scale.min() / 1.5, max(land.weight_decay) * scale.max() * 1.5)
        ax.set_xlabel("η·λ" if land.decay != "independent" else "λ (independent)")
        ax.set_ylabel(f"final {metric.replace('_', ' ')}")
        ax.set_title(land.arm, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title or "Collapse: one product explains the landscape when the curves coincide", fontsize=11)
    return fig


def channels_figure(arms: list[dict]):
    """The claims' figure (study/claims.py, item (b)): for one member of each arm with a preconditioner (its best
    cell, lowest seed), every decayed output channel as a point. Left: its decay rate per step at the peak
    learning rate against its mean √v̂ over training: η·λ/√v̂ under coupled L2 (ε, ≤ 1e-8, left out), η·λ
    decoupled, λ independent. Right: its final weight norm against its mean √v̂, both divided by the tensor's
    median (the claim is within tensors), with the mean over tensors of their rank correlation. None when no arm
    recorded them."""
    from scipy.stats import spearmanr

    shown_arms = [a for a in arms if a.get("channels")]
    if not shown_arms:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for i, a in enumerate(shown_arms):
        ch, colour = a["channels"], plt.get_cmap("tab10")(i)
        roots = np.concatenate([np.asarray(v, float) for v in ch["sqrt_v"]])
        uniform = a["weight_decay"] * (1.0 if a["decay"] == "independent" else a["lr"])
        rate = uniform / roots if a["decay"] == "coupled" else np.full_like(roots, uniform)
        left.scatter(roots, rate, s=7, alpha=0.6, color=colour, label=f"{a['arm']} (η={shown(a['lr'])}, "
                     f"λ={shown(a['weight_decay'])}, seed {ch['seed']})")
        rel_v, rel_n, rhos = [], [], []
        for v, n in zip(ch["sqrt_v"], ch["norm"]):
            v, n = np.asarray(v, float), np.asarray(n, float)
            rel_v.append(v / np.median(v))
            rel_n.append(n / np.median(n))
            if len(v) >= 3:
                rhos.append(spearmanr(n, v).statistic)
        rho = float(np.nanmean(rhos)) if rhos else math.nan
        right.scatter(np.concatenate(rel_v), np.concatenate(rel_n), s=7, alpha=0.6, color=colour,
                      label=f"{a['arm']}: rank correlation {fmt_number(rho, '+.2f')}")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    left.set_xlabel("channel's mean √v̂ over training")
    left.set_ylabel("decay rate per step (fraction of the weight)")
    left.set_title("How much of a channel the decay removes per step", fontsize=10)
    right.set_xlabel("mean √v̂ / the tensor's median")
    right.set_ylabel("final weight norm / the tensor's median")
    right.set_title("Larger √v̂, larger weight? (the article: yes, under L2)", fontsize=10)
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    for axis in (right.xaxis, right.yaxis):  # 0.5, 1, 2 rather than 5×10⁻¹, 10⁰, 2×10⁰
        axis.set_major_locator(FixedLocator([1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8]))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    fig.suptitle("Per output channel of the decayed tensors, one member at each arm's best cell", fontsize=11)
    return fig


# the figures a dashboard may name, one signature: (landscapes, title, metric, columns) -> matplotlib Figure
FIGURES = {"heatmaps": heatmaps, "ridge": ridge_figure, "collapse": collapse_figure}
