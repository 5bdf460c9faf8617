"""`study export`: landscapes of a recorded study as figures, landscape.json and a self-contained HTML report.

Owns the export pipeline and the dashboards (dashboards/*.yaml: which figures, metric, arms, titles).
Reads MLflow through tracking.py; the statistics are landscape.py's, the pictures plots.py's.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import sys
from pathlib import Path


import yaml

from .landscape import (ArmLandscape, arm_landscape, edge_advice, fmt_number, landscapes, parent_metrics, study_verdict,
                        verdict_tags)
from .spec import SpecError, shown, shown_metric

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"
FORMATS = ("png", "svg", "html")


DASHBOARD_KEYS = {"title": str, "description": str, "metric": str, "figures": list}
FIGURE_KEYS = {"kind": str, "arms": list, "title": str, "columns": int, "name": str}


def dashboard_folder(name_or_path: str) -> str:
    """The parent run's folder for a dashboard's figures: a shipped dashboard's name; a file of one's own gets
    its name and a digest of its path, so that `my/default.yaml` never replaces the shipped default's figures."""
    import hashlib

    p = Path(name_or_path)
    if not p.suffix or p.resolve().parent == DASHBOARDS:
        return p.stem
    return f"{p.stem}-{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:8]}"


def load_dashboard(name_or_path: str) -> dict:
    """A dashboard file (dashboards/NAME.yaml, or a path), read as strictly as a spec: every key known, every
    value of its type, one line naming the file and the key otherwise."""
    from .plots import FIGURES
    from .spec import LANDSCAPE_METRICS, load_yaml, yaml_message

    p = Path(name_or_path)
    if not p.suffix:
        p = DASHBOARDS / f"{name_or_path}.yaml"
    if not p.is_file():
        known = ", ".join(sorted(f.stem for f in DASHBOARDS.glob("*.yaml")))
        raise SpecError(f"invalid --dashboard: no dashboard {name_or_path!r} (known: {known})")

    def bad(where: str, msg: str):
        raise SpecError(f"{p.name}: invalid {where}: {msg}")

    try:
        text = p.read_bytes()[:256 * 1024 + 1].decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        bad("--dashboard", f"cannot read {p} as UTF-8 YAML ({type(e).__name__})")
    if len(text) > 256 * 1024:
        bad("--dashboard", f"{p} is larger than 256 KiB; a dashboard is a page of YAML")
    try:
        d = load_yaml(text)
    except yaml.YAMLError as e:
        bad("--dashboard", f"invalid YAML: {yaml_message(e)}")
    d = {} if d is None else d
    if not isinstance(d, dict):
        bad("--dashboard", f"a dashboard is a mapping of {', '.join(DASHBOARD_KEYS)}, but got {type(d).__name__}")
    for k, v in d.items():
        if k not in DASHBOARD_KEYS:
            bad(repr(k), f"unknown key; allowed keys: {', '.join(sorted(DASHBOARD_KEYS))}")
        if not isinstance(v, DASHBOARD_KEYS[k]):
            bad(k, f"must be a {DASHBOARD_KEYS[k].__name__}, but got {k}={str(v)[:40]!r}")
    if "metric" in d and d["metric"] not in LANDSCAPE_METRICS:
        bad("metric", f"must be one of {', '.join(LANDSCAPE_METRICS)}, but got metric={d['metric'][:40]!r}")
    for i, f in enumerate(d.get("figures", [])):
        w = f"figures[{i}]"
        if not isinstance(f, dict):
            bad(w, f"a figure is a mapping with kind ({', '.join(FIGURES)}), but got {str(f)[:40]!r}")
        for k, v in f.items():
            if k not in FIGURE_KEYS:
                bad(f"{w}.{k}", f"unknown key; allowed keys: {', '.join(sorted(FIGURE_KEYS))}")
            if not isinstance(v, FIGURE_KEYS[k]) or isinstance(v, bool):
                bad(f"{w}.{k}", f"must be a {FIGURE_KEYS[k].__name__}, but got {k}={str(v)[:40]!r}")
        if f.get("kind") not in FIGURES:
            bad(f"{w}.kind", f"must be one of {', '.join(FIGURES)}, but got kind={str(f.get('kind'))[:40]!r}")
        if f.get("arms") == []:
            bad(f"{w}.arms", "an empty list would draw every arm; leave arms out for that, or name the arms")
        if not all(isinstance(a, str) for a in f.get("arms", [])):
            bad(f"{w}.arms", f"a list of arm names (optimizer-decay), but got arms={str(f['arms'])[:40]!r}")
        if "columns" in f and f.get("kind") != "heatmaps":
            bad(f"{w}.columns", f"only a heatmaps figure has columns, but a {f['kind']} figure got columns={f['columns']}")
        if not 1 <= f.get("columns", 2) <= 8:
            bad(f"{w}.columns", f"must lie in [1, 8], but got columns={f['columns']}")
        if "name" in f and not re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", f["name"]):
            bad(f"{w}.name", f"a file stem of letters, digits, '_', '.', '-', but got name={f['name'][:40]!r}")
    # a figure's file stem: its name, else NN-kind (render's default), so an unnamed one may collide too
    names = [f.get("name") or f"{i + 1:02d}-{f['kind']}" for i, f in enumerate(d.get("figures", []))]
    if len(set(names)) < len(names):
        bad("figures", f"two figures share the file name {next(n for n in names if names.count(n) > 1)!r} "
                       f"(one file each: give them other names)")
    d.setdefault("figures", [{"kind": k} for k in FIGURES])
    return d


def _select(lands: list[ArmLandscape], arms) -> list[ArmLandscape]:
    if not arms:
        return lands
    by = {L.arm: L for L in lands}
    return [by[a] for a in arms if a in by]


def render(study: str, metric: str, lands: list[ArmLandscape], dashboard: dict, out: Path, formats,
           spec_text: str = "", environment: dict | None = None, claims: dict | None = None,
           runs: tuple[dict, str] | None = None) -> list[Path]:
    """Write the dashboard's figures, landscape.json, claims.json (given `claims`, see study/claims.py) and (with
    'html') report.html into `out`; `runs` as report_html's."""
    import matplotlib.pyplot as plt

    from .plots import FIGURES

    out.mkdir(parents=True, exist_ok=True)
    written, pngs = [], []
    for i, fig_def in enumerate(dashboard["figures"]):
        kind = fig_def["kind"]
        chosen = _select(lands, fig_def.get("arms"))
        missing = [a for a in fig_def.get("arms", []) if a not in {L.arm for L in chosen}]
        if missing:  # a dashboard may serve studies with fewer arms: said, not silently dropped
            what = (f"drawn with {', '.join(L.arm for L in chosen)}" if chosen
                    else "not drawn: the study has none of its arms")
            print(f"warning: dashboard figure {fig_def.get('name', f'{i + 1:02d}-{kind}')!r} names arms this "
                  f"study lacks ({', '.join(missing)}): {what}", file=sys.stderr)
        if not chosen:
            continue
        # literal text: a "$" would start matplotlib's math mode (and an unbalanced one is a parse error)
        title = fig_def.get("title", "").replace("{metric}", metric.replace("_", " ")).replace("$", r"\$")
        fig = FIGURES[kind](chosen, title=title, metric=metric, columns=fig_def.get("columns", 2))
        stem = fig_def.get("name", f"{i + 1:02d}-{kind}")
        for fmt in formats:
            if fmt in ("png", "svg"):
                path = out / f"{stem}.{fmt}"
                fig.savefig(path, dpi=130)
                written.append(path)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        pngs.append((title or kind, base64.b64encode(buf.getvalue()).decode()))  # the caption, placeholder filled
        plt.close(fig)
    doc = {"study": study, "metric": metric, "verdict": study_verdict(lands), "arms": [L.to_json() for L in lands],
           "environment": environment or {}}
    (out / "landscape.json").write_text(json.dumps(doc, indent=1))
    written.append(out / "landscape.json")
    claims_png = None
    if claims is not None:
        (out / "claims.json").write_text(json.dumps(_clean_json(claims), indent=1))
        written.append(out / "claims.json")
        from .plots import channels_figure

        fig = channels_figure(claims.get("arms", []))
        if fig is not None:  # the per-channel figure of (b): only where an arm has a preconditioner
            for fmt in formats:
                if fmt in ("png", "svg"):
                    fig.savefig(out / f"claims-channels.{fmt}", dpi=130)
                    written.append(out / f"claims-channels.{fmt}")
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110)
            claims_png = base64.b64encode(buf.getvalue()).decode()
            plt.close(fig)
    if "html" in formats:
        path = out / "report.html"
        path.write_text(report_html(study, metric, lands, pngs, spec_text, dashboard.get("title", ""), environment,
                                    claims, dashboard.get("description", ""), runs, claims_png))
        written.append(path)
    return written


def _num(v, fmt=".3g") -> str:
    return fmt_number(v, fmt)


def _lam(v) -> str:
    """A learning rate or weight decay, spelled as params and run names spell it (spec.shown); n/a if missing."""
    return shown(v) if isinstance(v, (int, float)) and math.isfinite(v) else fmt_number(v)


def _axis_map(values, centres):
    """Position on a categorical cell axis of any value, linear in its log between cell centres (and beyond)."""
    import numpy as np

    lv, cs = np.log(np.asarray(values, float)), np.asarray(centres, float)
    if len(lv) == 1:
        return lambda v: cs[0]
    lo_slope = (cs[1] - cs[0]) / (lv[1] - lv[0])
    hi_slope = (cs[-1] - cs[-2]) / (lv[-1] - lv[-2])

    def pos(v):
        x = math.log(v)
        if x < lv[0]:
            return float(cs[0] + (x - lv[0]) * lo_slope)
        if x > lv[-1]:
            return float(cs[-1] + (x - lv[-1]) * hi_slope)
        return float(np.interp(x, lv, cs))
    return pos


def _svg_heatmap(land: ArmLandscape, zmin: float, zmax: float, metric: str, extend: str = "neither",
                 partial: dict | None = None, seeds: int | None = None, links: dict | None = None) -> str:
    """One arm's landscape as inline SVG: every cell carries its value as a <title> (the hover text), the
    best λ per row and the fitted ridge in crimson with a legend, diverged cells grey with a cross, and a
    colour bar whose clipped end is an arrow labelled "≥ x". `extend` (plots.color_extend: which ends of the
    shared scale clip some arm's values) is the same for every arm. No JavaScript library: a few kB per arm.
    `partial` (a study still running, live_html): (row, column) -> seeds finished of `seeds`, for cells not done;
    `links`: (row, column) -> the address a click on the cell opens (its setting run in MLflow's UI)."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import to_hex
    from matplotlib.ticker import MaxNLocator

    from .landscape import predict_log_wd, row_best_cells
    from .plots import grid_labels, thin

    esc = html.escape
    cmap = colormaps["viridis"]
    span = zmax - zmin if zmax > zmin else 1e-6
    colour = lambda v: to_hex(cmap(min(1.0, max(0.0, (v - zmin) / span))))  # noqa: E731
    err, div = np.array(land.error, float), np.array(land.diverged, float)
    nr, nc = err.shape
    rotate = nc > 6
    ml, mt, pw, ph, mr = 84, 58, 380, 300, 150
    cw, ch = pw / nc, ph / nr
    xc = [ml + (c + 0.5) * cw for c in range(nc)]
    yc = [mt + (nr - 1 - r + 0.5) * ch for r in range(nr)]
    xpos, ypos = _axis_map(land.weight_decay, xc), _axis_map(land.lr, yc)
    uid = "".join(k if k.isalnum() else "-" for k in land.arm)
    parts = [f'<defs><clipPath id="clip-{uid}"><rect x="{ml}" y="{mt}" width="{pw}" height="{ph}"/></clipPath>'
             f'<linearGradient id="cbar-{uid}" x1="0" y1="1" x2="0" y2="0">'
             + "".join(f'<stop offset="{t:.2f}" stop-color="{to_hex(cmap(t))}"/>' for t in np.linspace(0, 1, 11))
             + "</linearGradient></defs>"]
    n_seeds = len(land.seeds)
    diverged_any = False
    for r in range(nr):
        for c in range(nc):
            x, y = ml + c * cw, mt + (nr - 1 - r) * ch
            where = f"λ={shown(land.weight_decay[c])}, η={shown(land.lr[r])}"
            e, d = err[r, c], div[r, c]
            done = (partial or {}).get((r, c))
            if done == 0:  # live: nothing of this cell has finished
                parts.append(f'<rect class="cell pending" x="{x:.1f}" y="{y:.1f}" width="{cw:.1f}" height="{ch:.1f}" '
                             f'fill="#efefef"><title>{esc(f"{where}: not finished yet")}</title></rect>')
                continue
            if math.isfinite(e):
                tip = f"{where}: {metric}={shown_metric(e)}" + (f" ({d:.0%} of {n_seeds} seeds diverged)" if d > 0 else "")
                if done is not None:
                    tip += f" ({done} of {seeds} seeds so far)"
                if e > zmax:
                    tip += f" (above the colour scale's {zmax:.3g})"
                cell = (f'<rect class="cell" x="{x:.1f}" y="{y:.1f}" width="{cw:.1f}" height="{ch:.1f}" '
                        f'fill="{colour(e)}"><title>{esc(tip)}</title></rect>')
            else:
                diverged = d > 0
                diverged_any |= diverged
                tip = f"{where}: diverged (all {n_seeds} seeds)" if diverged else f"{where}: no data"
                cell = (f'<rect class="cell" x="{x:.1f}" y="{y:.1f}" width="{cw:.1f}" height="{ch:.1f}" '
                        f'fill="#d9d9d9"><title>{esc(tip)}</title></rect>')
            href = (links or {}).get((r, c))  # a diverged cell's setting run too: it records how its seeds ended
            parts.append(f'<a class="run" href="{esc(href)}" target="_top">{cell}</a>' if href else cell)
            if not math.isfinite(e) and d > 0:  # a cross over a diverged cell
                cx, cy, h = x + cw / 2, y + ch / 2, min(cw, ch) * 0.18
                parts.append(f'<path d="M{cx - h:.1f},{cy - h:.1f}L{cx + h:.1f},{cy + h:.1f}M{cx - h:.1f},'
                             f'{cy + h:.1f}L{cx + h:.1f},{cy - h:.1f}" stroke="#595959" stroke-width="3" '
                             f'pointer-events="none"/>')
    if not land.grid and land.samples:                  # the sampled points over the interpolated surface
        for m in land.samples:
            tip = (f"sample λ={shown(m['weight_decay'])}, η={shown(m['lr'])}: "
                   + ("diverged" if m["diverged"] else f"{metric}={shown_metric(m['error'])}"))
            fill = "#d9d9d9" if m["diverged"] or not math.isfinite(m["error"]) else colour(m["error"])
            parts.append(f'<circle cx="{xpos(m["weight_decay"]):.1f}" cy="{ypos(m["lr"]):.1f}" r="3.5" '
                         f'fill="{fill}" stroke="black" stroke-width="0.7" clip-path="url(#clip-{uid})">'
                         f"<title>{esc(tip)}</title></circle>")
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    legend = []
    censored = land.censored or [None] * nr
    if math.isfinite(land.slope):                       # the fitted ridge (censored rows enter it as bounds)
        xs = np.geomspace(min(land.lr), max(land.lr), 30)
        ys = np.exp(predict_log_wd(land, xs)[0])
        pts = " ".join(f"{xpos(w):.1f},{ypos(lr):.1f}" for w, lr in zip(ys, xs) if math.isfinite(w))
        lo, hi = land.slope_ci
        fit = f"fitted ridge: slope {land.slope:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) else "")
        parts.append(f'<polyline class="fit" points="{pts}" fill="none" stroke="white" stroke-width="2.2" '
                     f'stroke-dasharray="7,4" clip-path="url(#clip-{uid})"><title>{esc(fit)}</title></polyline>')
        legend.append(('<line x1="0" y1="0" x2="22" y2="0" stroke="#555" stroke-width="2.2" '
                       'stroke-dasharray="7,4"/>', fit + " (valley model)"))
    cells = row_best_cells(land) if land.grid else []
    for r, c in cells:                                  # the observed best cell of each row: a square outline
        opt = land.best_weight_decay[r] if r < len(land.best_weight_decay) else math.nan
        tip = (f"η={shown(land.lr[r])}: best cell λ={shown(land.weight_decay[c])}"
               + (f", bracketed optimum λ*≈{shown(opt)}" if censored[r] is None and math.isfinite(opt)
                  else ", optimum not bracketed"))
        parts.append(f'<rect class="best-cell" x="{ml + c * cw + 3:.1f}" y="{mt + (nr - 1 - r) * ch + 3:.1f}" '
                     f'width="{cw - 6:.1f}" height="{ch - 6:.1f}" fill="none" stroke="crimson" stroke-width="2.5">'
                     f"<title>{esc(tip)}</title></rect>")
    if cells:
        legend.insert(0, ('<rect x="4" y="-7" width="14" height="14" fill="none" stroke="crimson" stroke-width="2.5"/>',
                          "best cell of each row (measured)"))
    beyond = False
    for r, side in enumerate(censored):                 # best λ beyond the grid: open arrows at the edge
        if side in ("high", "low"):
            beyond = True
            x, y = (ml + pw - 9, yc[r]) if side == "high" else (ml + 9, yc[r])
            sgn = 1 if side == "high" else -1
            parts.append(f'<path d="M{x - 6 * sgn:.1f},{y - 7:.1f}L{x + 6 * sgn:.1f},{y:.1f}L{x - 6 * sgn:.1f},'
                         f'{y + 7:.1f}Z" fill="none" stroke="crimson" stroke-width="2">'
                         f"<title>{esc(f'η={shown(land.lr[r])}: best λ beyond the {side} edge of the grid')}</title>"
                         "</path>")
    if beyond:
        legend.append(('<path d="M5,-7L17,0L5,7Z" fill="none" stroke="crimson" stroke-width="2"/>',
                       "best at the grid edge: optimum not bracketed"))
    if diverged_any:
        legend.append(('<rect x="3" y="-8" width="16" height="16" fill="#d9d9d9"/>'
                       '<path d="M7,-4L15,4M7,4L15,-4" stroke="#595959" stroke-width="2.5"/>', "diverged"))
    # axes: every grid value labelled (thinned above 12), as in the static figures
    for x, t in zip(xc, thin(grid_labels(land.weight_decay))):
        parts.append(f'<line x1="{x:.1f}" y1="{mt + ph}" x2="{x:.1f}" y2="{mt + ph + 4}" stroke="#444"/>')
        if t:
            parts.append(f'<text class="tick" x="{x:.1f}" y="{mt + ph + 16}" text-anchor="end" '
                         f'transform="rotate(-40 {x:.1f} {mt + ph + 16})">{esc(t)}</text>' if rotate else
                         f'<text class="tick" x="{x:.1f}" y="{mt + ph + 17}" text-anchor="middle">{esc(t)}</text>')
    for y, t in zip(yc, thin(grid_labels(land.lr))):
        parts.append(f'<line x1="{ml - 4}" y1="{y:.1f}" x2="{ml}" y2="{y:.1f}" stroke="#444"/>')
        if t:
            parts.append(f'<text class="tick" x="{ml - 7}" y="{y + 4:.1f}" text-anchor="end">{esc(t)}</text>')
    xt = mt + ph + (52 if rotate else 38)
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{xt}" text-anchor="middle">weight decay λ ({esc(land.decay)})</text>')
    parts.append(f'<text x="18" y="{mt + ph / 2:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 18 {mt + ph / 2:.1f})">learning rate η</text>')
    lo, hi = land.slope_ci
    title = f"{land.arm}: slope {_num(land.slope, '.2f')} [{_num(lo, '.2f')}, {_num(hi, '.2f')}]"
    parts.append(f'<text class="title" x="{(ml + pw + mr) / 2:.1f}" y="20" text-anchor="middle">{esc(title)}</text>'
                 f'<text class="subtitle" x="{(ml + pw + mr) / 2:.1f}" y="38" text-anchor="middle">'
                 f'predicted {esc(land.predicted[1])}</text>')
    # the colour bar: arrows where values lie beyond the scale, whose end ticks then read "≥ x" / "≤ x"
    over, under = extend in ("max", "both"), extend in ("min", "both")
    bx, bw = ml + pw + 24, 14
    parts.append(f'<rect x="{bx}" y="{mt}" width="{bw}" height="{ph}" fill="url(#cbar-{uid})" stroke="#444" '
                 f'stroke-width="0.5"/>')
    if over:
        parts.append(f'<path class="extend-max" d="M{bx},{mt}L{bx + bw / 2},{mt - 12}L{bx + bw},{mt}Z" '
                     f'fill="{to_hex(cmap(1.0))}" stroke="#444" stroke-width="0.5"><title>values above '
                     f'{zmax:.3g} are drawn in this colour</title></path>')
    if under:
        parts.append(f'<path class="extend-min" d="M{bx},{mt + ph}L{bx + bw / 2},{mt + ph + 12}L{bx + bw},{mt + ph}Z" '
                     f'fill="{to_hex(cmap(0.0))}" stroke="#444" stroke-width="0.5"/>')
    ybar = lambda v: mt + ph * (1 - (v - zmin) / span)  # noqa: E731
    ticks = [(ybar(zmax), f"≥ {zmax:.3g}", "cbar-top")] if over else []
    ticks += [(ybar(zmin), f"≤ {zmin:.3g}", "cbar-bottom")] if under else []
    for v in MaxNLocator(5).tick_values(zmin, zmax):
        if zmin - 1e-12 <= v <= zmax + 1e-12 and all(abs(ybar(v) - y) > 13 for y, _, _ in ticks):
            ticks.append((ybar(v), f"{v:.3g}", "cbar"))
    for y, t, cls in ticks:
        parts.append(f'<line x1="{bx + bw}" y1="{y:.1f}" x2="{bx + bw + 4}" y2="{y:.1f}" stroke="#444"/>'
                     f'<text class="{cls}" x="{bx + bw + 7}" y="{y + 4:.1f}">{esc(t)}</text>')
    cx = bx + bw + 72
    parts.append(f'<text x="{cx}" y="{mt + ph / 2:.1f}" text-anchor="middle" transform="rotate(-90 {cx} '
                 f'{mt + ph / 2:.1f})">final {esc(metric)} (mean over seeds)</text>')
    ly = xt + 14
    for i, (glyph, text) in enumerate(legend):
        x, y = 14 + (i % 2) * 300, ly + 18 * (i // 2) + 8
        parts.append(f'<g class="legend-item" transform="translate({x},{y})">{glyph}'
                     f'<text x="28" y="4">{esc(text)}</text></g>')
    height = ly + 18 * math.ceil(len(legend) / 2) + 10
    width = ml + pw + mr
    return (f'<figure class="heatmap" id="heatmap-{esc(land.arm)}"><svg xmlns="http://www.w3.org/2000/svg" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{esc(title)}">{"".join(parts)}</svg>'
            f'<figcaption class="readout">hover a cell for its {esc(metric)}</figcaption></figure>')


def _clean_json(v):
    """NaN and ±inf as null (JSON has neither), at any depth."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean_json(x) for x in v]
    return v


def claims_html(claims: dict | None, metric: str, figure_png: str | None = None) -> str:
    """The report's section on the article's claims (study/claims.py): the SGD identities on the study's model,
    then per arm its best error over seeds, tensor counts, the decay diagnostics, slope and regime, and the
    per-channel figure (plots.channels_figure, a base64 PNG) where one was drawn."""
    if not claims:
        return ""
    sgd = claims.get("sgd")
    if isinstance(sgd, list) and sgd:
        r0 = sgd[0]
        rows = "".join(f"<tr><td>{_num(r['momentum'])}</td><td>{r['coupled_vs_decoupled']:.1e}</td>"
                       f"<td>{r['decoupled_vs_independent']:.1e}</td></tr>" for r in sgd)
        sgd_part = (f"<p>(a) Plain SGD: coupled(λ), decoupled(λ) and independent(η·λ) from the same initial weights, "
                    f"{r0['steps']} float64 steps of this study's model at η = {shown(r0['lr'])}, λ = "
                    f"{shown(r0['weight_decay'])} on a fixed random batch of eight 8×8 images. The largest weight difference, relative to "
                    f"the largest change of a weight over those steps:</p><table id=\"sgd-identity\"><thead><tr>"
                    f"<th>momentum</th><th>coupled vs decoupled</th><th>decoupled vs independent(η·λ)</th></tr>"
                    f"</thead><tbody>{rows}</tbody></table><p>Without momentum the three rules are one (rounding "
                    f"only); with momentum coupled decay passes through the momentum buffer and parts from the "
                    f"other two, which stay one.</p>")
    elif isinstance(sgd, dict):
        sgd_part = f"<p>(a) Plain SGD identities: not shown ({html.escape(sgd.get('error', ''))}).</p>"
    else:
        sgd_part = ""
    rows = "".join(
        f"<tr><td>{html.escape(a['arm'])}</td><td>{_lam(a['lr'])}</td><td>{_lam(a['weight_decay'])}</td>"
        f"<td>{_num(a['error'], '.4f')} ± {_num(a['error_spread'], '.4f')} ({a['seeds']})</td>"
        f"<td>{'n/a' if a['decayed_tensors'] is None else a['decayed_tensors']} / "
        f"{'n/a' if a['no_decay_tensors'] is None else a['no_decay_tensors']}</td>"
        f"<td>{_num(a['decay_spread'], '.2f')}</td><td>{_num(a['norm_sqrt_v_corr'], '+.2f')}</td>"
        f"<td>{_num(a['slope'], '.2f')} [{_num(a['slope_ci'][0], '.2f')}, {_num(a['slope_ci'][1], '.2f')}]: "
        f"{html.escape(a['outcome'])}<br><small>predicted {html.escape(a['predicted'])}</small></td>"
        f"<td>{html.escape(a['regime'])}<br><small>final train loss {_num(a.get('train_loss', math.nan), '.2g')}"
        f"</small></td></tr>" for a in claims.get("arms", []))
    by_arm = {a["arm"]: a for a in claims.get("arms", [])}
    compare = ""
    c, d = by_arm.get("adam-coupled"), by_arm.get("adam-decoupled")
    if c and d and math.isfinite(c["norm_sqrt_v_corr"]) and math.isfinite(d["norm_sqrt_v_corr"]):
        gap = c["norm_sqrt_v_corr"] - d["norm_sqrt_v_corr"]
        noise = (c.get("norm_sqrt_v_corr_spread") or 0) + (d.get("norm_sqrt_v_corr_spread") or 0)
        if min(c["seeds"], d["seeds"]) < 2:
            said = "one seed: no spread over seeds to judge the difference by"
        elif abs(gap) <= noise:
            said = "no clear difference: the gap is within the two cells' half-ranges over seeds"
        elif gap > 0:
            said = "higher under coupled decay, beyond the seeds' half-ranges, as the article predicts"
        else:
            said = "lower under coupled decay, beyond the seeds' half-ranges, against the article"
        compare = (f"<p id=\"outcome-correlation\">Measured: the norm–√v̂ correlation is "
                   f"{_num(c['norm_sqrt_v_corr'], '+.2f')} ± {_num(c.get('norm_sqrt_v_corr_spread'), '.2f')} under "
                   f"coupled Adam and {_num(d['norm_sqrt_v_corr'], '+.2f')} ± "
                   f"{_num(d.get('norm_sqrt_v_corr_spread'), '.2f')} under decoupled Adam at their best cells: "
                   f"{said}.</p>")
    figure = ("" if not figure_png else
              f'<figure id="claims-channels"><img alt="per-channel decay rate and weight norm against √v̂" '
              f'src="data:image/png;base64,{figure_png}"><figcaption>(b) per output channel of the decayed tensors, '
              f"one member (its lowest seed) at each Adam, Adagrad or RMSprop arm's best cell: the decay rate per step at the "
              f"peak learning rate, and the final weight norm, against the channel's mean √v̂ over training"
              f"</figcaption></figure>")
    return f"""<h2>The article's claims</h2>{sgd_part}
<p>(b)-(e) Per arm at its best cell (the seed-averaged best setting): the best final {html.escape(metric)} with its
half-range over seeds (how many); decayed / never-decayed tensors; the spread of the per-weight decay rate (90th /
10th percentile, 1 by definition for decoupled and independent decay; under coupled Adam, L2 is divided by √v̂);
the rank correlation between a channel's final weight norm and its mean √v̂ (the article predicts it higher under
coupled decay: weights with a large gradient history regularized less); the slope of log λ*(η) beside its
prediction; and the regime: the angular update of the decayed weights at mid-run against its equilibrium value
(the predicted slopes assume equilibrium), with the final training loss (near 0: the training set is
memorized).</p>
<table id="claims"><thead><tr><th>arm</th><th>best η</th><th>best λ</th><th>best {html.escape(metric)} (seeds)</th>
<th>decayed / never</th><th>decay spread</th><th>norm–√v̂ corr</th><th>slope</th><th>regime</th></tr></thead>
<tbody>{rows}</tbody></table>{compare}{figure}"""


# the interactive heatmaps' look and hover read-out, shared by the report and the live page
HEATMAP_STYLE = """figure.heatmap { margin: 0; } figure.heatmap svg { font-size: 12px; }
figure.heatmap .title { font-size: 14px; font-weight: 600; } figure.heatmap .subtitle { fill: #555; }
figure.heatmap .tick { font-size: 11px; } figure.heatmap rect.cell:hover { stroke: #fff; stroke-width: 2; }
figure.heatmap .readout { font-size: 0.9em; color: #444; min-height: 1.3em; padding-left: 1em; }
"""
def cell_links(land: ArmLandscape, runs: dict[tuple, str], experiment_id: str) -> dict | None:
    """(row, column) -> the MLflow UI address of the cell's seed-averaged setting run (tracking.setting_run_ids
    `runs`), relative to the UI's root: it opens where the page is served by `study ui` (the live page, the
    report at /study/NAME/report)."""
    if not land.grid:
        return None
    return {(r, c): f"/#/experiments/{experiment_id}/runs/{run}" for r, lr in enumerate(land.lr)
            for c, wd in enumerate(land.weight_decay) if (run := runs.get((land.arm, lr, wd)))}


# a report opened as a file has no MLflow UI beside it: its cells keep their hover values and lose the links
FILE_LINKS_SCRIPT = """<script>
document.addEventListener("DOMContentLoaded", () => {
  if (location.protocol === "file:") document.querySelectorAll("a.run").forEach(a => a.removeAttribute("href"));
});
</script>"""

HOVER_SCRIPT = """<script>
// hover: show the hovered element's <title> (its value) below the heatmap; the native tooltip shows it too
document.addEventListener("mouseover", e => {
  const el = e.target.closest && e.target.closest("figure.heatmap svg *");
  const tip = el && el.querySelector(":scope > title");
  if (tip) el.closest("figure.heatmap").querySelector(".readout").textContent = tip.textContent;
});
</script>"""


def report_html(study: str, metric: str, lands: list[ArmLandscape], pngs, spec_text: str, title: str,
                environment: dict | None = None, claims: dict | None = None, description: str = "",
                runs: tuple[dict, str] | None = None, claims_png: str | None = None) -> str:
    """One HTML file, viewable offline and fetching nothing: the heatmaps are inline SVG (hover: each cell's
    <title>, echoed below the plot by a few lines of script), the figures inline PNGs. `runs`: the setting runs
    and their experiment (cell_links); a cell opens its run where `study ui` serves the report."""
    from .plots import color_extend, error_range
    from .tracking import environment_line

    zmin, zmax = error_range(lands)
    zmax = zmax if zmax > zmin else zmin + 1e-6
    extend = color_extend(lands, zmin, zmax)
    rows = "".join(
        f"<tr><td>{html.escape(L.arm)}</td><td>{_lam(L.best['lr'])}</td><td>{_lam(L.best['weight_decay'])}</td>"
        f"<td>{shown_metric(L.best['error'])}</td><td>{_num(L.slope, '.2f')}</td>"
        f"<td>[{_num(L.slope_ci[0], '.2f')}, {_num(L.slope_ci[1], '.2f')}]</td>"
        f"<td>{html.escape(L.predicted[1])}</td><td>{html.escape(L.ci_method)}</td></tr>" for L in lands)
    interactive = "".join(_svg_heatmap(L, zmin, zmax, metric, extend, links=cell_links(L, *runs) if runs else None)
                          for L in lands)
    verdict = study_verdict(lands)
    outcome_class = {"consistent": "ok", "contradicts": "bad", "differ": "ok"}
    verdict_items = "".join(
        f'<li class="{outcome_class.get(v["outcome"], "open")}"><b>{html.escape(v["arm"])}</b> '
        f'(predicted {html.escape(L.predicted[1])}): {html.escape(v["text"])}</li>'
        for v, L in zip(verdict["arms"], lands))
    verdict_items += "".join(f'<li class="{outcome_class.get(p["outcome"], "open")}">{html.escape(p["text"])} '
                             f'<small>({html.escape(p["method"])})</small></li>' for p in verdict["pairs"])
    advice = "".join(f"<li>{html.escape(L.arm)}: {html.escape(a)}</li>" for L in lands if (a := edge_advice(L)))
    advice = f'<p>Grid edges:</p><ul id="edges">{advice}</ul>' if advice else ""
    figures = "".join(f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b}">'
                      f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, b in pngs)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(study)}: weight decay vs learning rate</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #bbb; padding: 4px 8px; text-align: right; }}
th {{ background: #eee; }} td:first-child {{ text-align: left; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1em; }} figure img {{ max-width: 100%; border: 1px solid #ddd; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
#verdict li {{ margin: 0.3em 0; }} li.ok {{ color: #14622b; }} li.bad {{ color: #a11; }} li.open {{ color: #7a5600; }}
{HEATMAP_STYLE}</style>
{HOVER_SCRIPT}{FILE_LINKS_SCRIPT}</head><body>
<h1>{html.escape(title or "Weight decay vs learning rate")}: {html.escape(study)}</h1>
{f'<p id="description">{html.escape(description)}</p>' if description else ""}
<section id="verdict"><h2>Verdict</h2><ul>{verdict_items}</ul>{advice}
<p id="environment"><small>Computed with {html.escape(environment_line(environment or {}))}</small></p></section>
<p>Metric: final {html.escape(metric)}. Squares mark the best cell of each learning-rate row; a row's optimum
λ*(η) counts as measured only where worse cells bracket it, and a row whose best cell is an edge column is
censored there (an arrow). The slope of log λ* against log η and its 95 % interval come from the valley model:
every cell near each row's best, one quadratic valley per row, the floor's line shared
(dashed), and the profile-likelihood interval; a verdict decides only when that interval is at most 1.5 wide.</p>
<h2>Best setting and slope per arm</h2>
<table id="arms"><thead><tr><th>arm</th><th>best η</th><th>best λ</th><th>best {html.escape(metric)}</th>
<th>slope</th><th>95 % interval</th><th>predicted</th><th>interval from</th></tr></thead><tbody>{rows}</tbody></table>
<h2>Interactive landscapes</h2><p>Hover a cell for its value. One colour scale for all arms;
an arrow on the colour bar marks values beyond it (drawn in the end colour). Served by <code>study ui</code>
(its address /study/{html.escape(study)}/report), a click on a cell opens its setting's run in MLflow.</p><div class="grid">{interactive}</div>
{claims_html(claims, metric, claims_png)}
<h2>Figures</h2>{figures}
<h2>Spec</h2><pre>{html.escape(spec_text)}</pre>
</body></html>
"""


LIVE_REFRESH_S = 20  # how often the live landscape page reloads itself


def _planned_cells(members: list[dict], spec) -> list[dict]:
    """Placeholders (no value) for every grid cell of each arm that no member has finished yet: the spec's grid
    and every learning rate and weight decay a finished member has (refine columns), crossed, so that a study
    half done still draws as the grid it will be, not as scattered samples."""
    from .spec import grid_axis

    if spec.search.sampler != "grid":
        return []
    out = []
    for arm in spec.arms:
        mine = [m for m in members if (m["optimizer"], m["decay"]) == (arm.optimizer, arm.decay)]
        lrs = sorted({*grid_axis(arm.lr, spec.search.points), *(m["lr"] for m in mine)})
        wds = sorted({*grid_axis(arm.weight_decay, spec.search.points), *(m["weight_decay"] for m in mine)})
        done = {(m["lr"], m["weight_decay"]) for m in mine}
        out += [{"optimizer": arm.optimizer, "decay": arm.decay, "lr": lr, "weight_decay": wd,
                 "seed": spec.search.seeds[0], "error": math.nan, "diverged": False, "run_id": None,
                 "total_steps": None} for lr in lrs for wd in wds if (lr, wd) not in done]
    return out


def _live_landscapes(members: list[dict], spec, metric: str, seeds_done: dict) -> tuple[list, list]:
    """(what the heatmaps draw, what the verdicts are read from) for a study part done. A cell not finished yet
    holds no value, which the landscape reads as worse than its neighbours (as a diverged one): a row with such a
    cell would show an optimum it has not bracketed. So slopes and verdicts come from the rows whose every cell
    has a finished seed, and the heatmaps draw the whole grid with that fit and no row marks where a row is not
    done. A finished study (or a sampler's scattered points) is drawn as the report draws it."""
    import dataclasses

    full = landscapes(members + _planned_cells(members, spec), metric=metric)
    heat, fits = [], []
    for L in full:
        pending = [r for r, lr in enumerate(L.lr) if L.grid and any(
            not seeds_done.get((L.optimizer, L.decay, lr, wd)) for wd in L.weight_decay)]
        if not pending:
            heat.append(L)
            fits.append(L)
            continue
        rows = [lr for r, lr in enumerate(L.lr) if r not in pending]
        mine = [m for m in members if (m["optimizer"], m["decay"]) == (L.optimizer, L.decay) and m["lr"] in rows]
        fit = arm_landscape(mine, metric=metric) if mine else None
        if fit is not None:
            fits.append(fit)
        by_lr = dict(zip(fit.lr, zip(fit.censored, fit.best_weight_decay))) if fit else {}
        heat.append(dataclasses.replace(
            L, slope=fit.slope if fit else math.nan, slope_ci=fit.slope_ci if fit else [math.nan, math.nan],
            ridge_fit=fit.ridge_fit if fit else {}, censored=[by_lr.get(lr, (None, math.nan))[0] for lr in L.lr],
            best_weight_decay=[by_lr.get(lr, (None, math.nan))[1] for lr in L.lr]))
    return heat, fits


def live_html(uri: str, study: str) -> str:
    """The study's landscape as it stands, as a page that reloads itself every LIVE_REFRESH_S seconds (`study ui`
    serves it while a study runs): the interactive heatmaps of the finished members, cells not finished yet in
    grey ("not finished yet"), a cell with some of its seeds done saying so, and the verdicts so far, marked
    provisional until every member is in. Reads only."""
    import time as _time

    from .tracking import find_parent, read_study, recorded_spec, setting_run_ids

    _, _, metric, members = read_study(uri, study, quiet=True)
    spec = recorded_spec(uri, study)
    parent = find_parent(uri, study)
    planned = parent.data.tags.get("members_planned")
    exp = parent.info.experiment_id
    runs = setting_run_ids(uri, study, exp)  # a finished cell links to its setting run on this same server
    seeds_done: dict[tuple, int] = {}
    for m in members:
        k = (m["optimizer"], m["decay"], m["lr"], m["weight_decay"])
        seeds_done[k] = seeds_done.get(k, 0) + 1
    state = (f"{len(members)} of {planned} members finished" if planned else f"{len(members)} members finished")
    complete = planned is None or len(members) >= int(planned)  # as is_complete: records without the tag are
    head = (f'<meta http-equiv="refresh" content="{LIVE_REFRESH_S}">' if not complete else "")
    if not members:
        body = "<p>No member has finished yet: the first cells appear when the first arrays end.</p>"
    else:
        from .plots import color_extend, error_range

        lands, shown_lands = _live_landscapes(members, spec, metric, seeds_done)
        zmin, zmax = error_range(lands)
        zmax = zmax if zmax > zmin else zmin + 1e-6
        extend = color_extend(lands, zmin, zmax)
        n_seeds = len(spec.search.seeds)
        maps = "".join(_svg_heatmap(L, zmin, zmax, metric, extend, partial={
            (r, c): n for r, lr in enumerate(L.lr) for c, wd in enumerate(L.weight_decay)
            if (n := seeds_done.get((L.optimizer, L.decay, lr, wd), 0)) < n_seeds} if L.grid else None,
            seeds=n_seeds, links=cell_links(L, runs, exp)) for L in lands)
        lines = html.escape("\n".join(summary_lines(shown_lands)) if shown_lands else
                            "no learning-rate row has every cell finished yet: no slope so far")
        so_far = "" if complete else "so far (provisional: from the rows whose every cell has finished)"
        body = f'<div class="grid">{maps}</div><h2>Verdicts {so_far}</h2><pre id="verdicts">{lines}</pre>'

    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{head}<title>{html.escape(study)}: live landscape</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }} .grid {{ display: flex; flex-wrap: wrap; gap: 1em; }}
pre {{ background: #f6f6f6; padding: 1em; white-space: pre-wrap; }}
{HEATMAP_STYLE}</style>
{HOVER_SCRIPT}</head><body>
<h1>{html.escape(study)}: the landscape {"(finished)" if complete else "as it stands"}</h1>
<p id="state">{html.escape(state)}, read at {_time.strftime("%H:%M:%S")}{"" if complete else
f"; this page reloads every {LIVE_REFRESH_S} s"}. Final {html.escape(metric)}, mean over the seeds finished; grey
cells are not finished yet (hover for how many seeds are in).</p>
{body}
</body></html>
"""


def export(uri: str, study: str, out: Path, metric: str | None = None, formats=("png", "svg", "html"),
           dashboard: str = "default", log_to_mlflow: bool = True) -> tuple[list[ArmLandscape], list[Path]]:
    """`study export`: the dashboard's figures, landscape.json, claims.json and report.html of a recorded study in
    `out`, logged to its parent run (unless not `log_to_mlflow`, or the study is not complete). `formats`: a tuple
    of FORMATS, or --format as written ("png,html")."""
    from .tracking import find_parent, log_export, parent_environment, read_study, setting_run_ids

    given = formats  # --format as written ("png,svg") or a tuple
    formats = tuple(f.strip() for f in formats.split(",") if f.strip()) if isinstance(formats, str) else formats
    if not formats or any(f not in FORMATS for f in formats):
        raise SpecError(f"invalid --format: a comma-separated list of {', '.join(FORMATS)}, but got "
                        f"{given if isinstance(given, str) else ','.join(given)!r}")
    dash = load_dashboard(dashboard)
    if metric and dash.get("metric") and metric != dash["metric"]:  # the flag decides, and says so
        print(f"note: --metric {metric} replaces the dashboard's metric {dash['metric']}", file=sys.stderr)
    parent, spec_text, metric, members = read_study(uri, study, metric or dash.get("metric"))
    if not members:
        raise SpecError(f"invalid name: study {study!r} has no finished member runs yet")
    lands = landscapes(members, metric=metric)
    from .claims import study_claims

    claims = study_claims(uri, yaml.safe_load(spec_text) or {} if spec_text else {}, lands, members)
    exp = find_parent(uri, study).info.experiment_id
    written = render(study, metric, lands, dash, Path(out), formats, spec_text, parent_environment(uri, parent),
                     claims, (setting_run_ids(uri, study, exp), exp))
    from .tracking import is_complete

    if log_to_mlflow and not is_complete(uri, study, len(members)):
        print("warning: not logged to the parent run: a half-done study's landscape is not the study's", file=sys.stderr)
        log_to_mlflow = False
    if log_to_mlflow:  # one folder per metric and dashboard: an export never replaces another's figures
        name = dashboard_folder(dashboard)
        log_export(uri, parent, Path(out), f"landscape/{metric}/{name}", files=written,
                   metrics=parent_metrics(lands), tags={**verdict_tags(lands), f"landscape.{metric}.{name}": f"landscape/{metric}/{name}"},
                   answer=(metric, study_verdict(lands)["lines"]))
    return lands, written


def best_lines(metric: str, best: dict, best_setting: dict) -> list[str]:
    """The closing lines of a run: per arm its best setting's mean over seeds (as the landscape ranks), or its best
    single member where no setting has all its seeds in."""
    out = []
    for arm in sorted(set(best) | set(best_setting)):
        if arm in best_setting:
            mean, lr, wd, n = best_setting[arm]
            out.append(f"  best {metric} of {arm}: {shown_metric(mean)} at η={shown(lr)}, λ={shown(wd)} "
                       f"(mean of {n} seed{'s' * (n != 1)})")
        else:
            out.append(f"  best single-seed {metric} of {arm}: {shown_metric(best[arm])} (one member, one seed)")
    return out


def recommend_lines(study: str, metric: str, members: list[dict], lr: float, arm: str | None) -> list[str]:
    """`study recommend`: λ*(η) at one learning rate from each arm's (or `arm`'s) fitted ridge, with its interval,
    η·λ and the decay timescale; SpecError (one line) for an unknown arm or a learning rate outside every ridge."""
    from .landscape import measured_lr_range, recommend

    lands = {L.arm: L for L in landscapes(members, metric=metric)}
    if arm is not None and arm not in lands:
        raise SpecError(f"invalid --arm: study {study!r} has arms {', '.join(lands)}, but got arm={arm!r}")
    chosen = [lands[arm]] if arm else list(lands.values())
    results, refused = [], []
    for L in chosen:
        try:
            results.append((L, recommend(L, lr)))
        except ValueError as e:
            refused.append(str(e))
    if not results:
        if len(refused) == 1 and (arm or not refused[0].startswith("invalid --arm: ")):
            raise SpecError(refused[0])
        no_ridge = [m.removeprefix("invalid --arm: ") for m in refused if m.startswith("invalid --arm: ")]
        if len(no_ridge) == len(refused):   # no --arm was given: blame the study, not a flag
            raise SpecError(f"invalid name: study {study!r} has no arm with a fitted ridge to recommend from: "
                            + "; ".join(no_ridge))
        ranges = "; ".join(f"{L.arm} [{shown(r[0])}, {shown(r[1])}]" if (r := measured_lr_range(L)) else f"{L.arm}: no ridge"
                           for L in chosen)
        raise SpecError(f"invalid --lr: {lr:.10g} is outside the learning rates where every arm's ridge was measured "
                        f"({ranges}); no extrapolation")
    steps = members[0].get("total_steps")  # the run's length, to say the timescale as a fraction of it
    out = [f"study {study} (final {metric}): best weight decay at η={shown(lr)} from each arm's fitted ridge, "
           f"95 % interval"]
    for L, r in results:
        lo, hi = r["weight_decay_ci"]
        ci = f"[{shown(lo)}, {shown(hi)}]" if math.isfinite(lo) else "(no interval: the data do not bound the slope)"
        tau = r["timescale_steps"]
        run = f" = {tau / steps:.2g}× the run's {steps} steps" if steps else ""
        prod = "" if L.decay == "independent" else f"; η·λ* = {r['lr_x_weight_decay']:.3g}"
        out.append(f"  {L.arm:<20} λ* = {shown(r['weight_decay'])} {ci}{prod}; decay timescale τ = {r['timescale_rule']} "
                   f"≈ {tau:.3g} steps{run} (ridge over {r['rows']} rows, η in [{shown(r['lr_range'][0])}, "
                   f"{shown(r['lr_range'][1])}]; slope {L.slope:.2f})")
        out.append(f"  {'':<20} verdict: {r['verdict_text']}")
        out += [f"  {'':<20} warning: {w}" for w in r["warnings"]]
    return out + [f"  {msg.split(': ', 1)[1]}" for msg in refused]


def summary_lines(lands: list[ArmLandscape]) -> list[str]:
    """The CLI summary: per arm its best setting (naming the metric), slope and verdict; then the pairs."""
    out = []
    verdict = study_verdict(lands)
    for L, v in zip(lands, verdict["arms"]):
        lo, hi = L.slope_ci
        out.append(f"  {L.arm:<20} best {L.metric} {shown_metric(L.best['error'])} at η={_lam(L.best['lr'])}, "
                   f"λ={_lam(L.best['weight_decay'])}; slope of log λ*(η): {_num(L.slope, '.2f')} "
                   f"[{_num(lo, '.2f')}, {_num(hi, '.2f')}] (predicted {L.predicted[1]}; {L.ci_method})")
        out.append(f"  {'':<20} verdict: {v['text']}")
        if (a := edge_advice(L)):
            out.append(f"  {'':<20} {a}")
    for p in verdict["pairs"]:
        out.append(f"  {p['text']} ({p['method']})")
    return out
