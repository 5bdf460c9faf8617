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
import sys
from pathlib import Path

import yaml

from .landscape import ArmLandscape, edge_advice, landscapes, parent_metrics, study_verdict, verdict_tags
from .spec import SpecError

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"
FORMATS = ("png", "svg", "html")


def load_dashboard(name_or_path: str) -> dict:
    p = Path(name_or_path)
    if not p.suffix:
        p = DASHBOARDS / f"{name_or_path}.yaml"
    if not p.is_file():
        known = ", ".join(sorted(f.stem for f in DASHBOARDS.glob("*.yaml")))
        raise SpecError(f"invalid --dashboard: no dashboard {name_or_path!r} (known: {known})")
    d = yaml.safe_load(p.read_text()) or {}
    allowed = {"title", "metric", "figures", "description"}
    for k in d:
        if k not in allowed:
            raise SpecError(f"{p.name}: unknown key {k!r}; allowed keys: {', '.join(sorted(allowed))}")
    from .plots import FIGURES
    for i, f in enumerate(d.get("figures", [])):
        if f.get("kind") not in FIGURES:
            raise SpecError(f"{p.name}: invalid figures[{i}].kind: must be one of {', '.join(FIGURES)}, "
                            f"but got kind={f.get('kind')!r}")
    d.setdefault("figures", [{"kind": k} for k in FIGURES])
    return d


def _select(lands: list[ArmLandscape], arms) -> list[ArmLandscape]:
    if not arms:
        return lands
    by = {L.arm: L for L in lands}
    return [by[a] for a in arms if a in by]


def render(study: str, metric: str, lands: list[ArmLandscape], dashboard: dict, out: Path, formats,
           spec_text: str = "") -> list[Path]:
    """Write the dashboard's figures, landscape.json and (with 'html') report.html into `out`."""
    import matplotlib.pyplot as plt

    from .plots import FIGURES

    out.mkdir(parents=True, exist_ok=True)
    written, pngs = [], []
    for i, fig_def in enumerate(dashboard["figures"]):
        kind = fig_def["kind"]
        chosen = _select(lands, fig_def.get("arms"))
        if not chosen:
            continue
        title = fig_def.get("title", "").replace("{metric}", metric.replace("_", " "))
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
    doc = {"study": study, "metric": metric, "verdict": study_verdict(lands), "arms": [L.to_json() for L in lands]}
    (out / "landscape.json").write_text(json.dumps(doc, indent=1))
    written.append(out / "landscape.json")
    if "html" in formats:
        path = out / "report.html"
        path.write_text(report_html(study, metric, lands, pngs, spec_text, dashboard.get("title", "")))
        written.append(path)
    return written


def _num(v, fmt=".3g") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "–"


def _plotly_heatmap(land: ArmLandscape, zmin: float, zmax: float, metric: str) -> str:
    import plotly.graph_objects as go

    text = [[("diverged" if (not math.isfinite(e) and d > 0) else f"{metric}={_num(e, '.4f')}")
             for e, d in zip(er, dr)] for er, dr in zip(land.error, land.diverged)]
    z = [[e if math.isfinite(e) else None for e in row] for row in land.error]
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"{w:.3g}" for w in land.weight_decay], y=[f"{lr:.3g}" for lr in land.lr], zmin=zmin, zmax=zmax,
        colorscale="Viridis", text=text, colorbar={"title": metric},
        hovertemplate="λ=%{x}<br>η=%{y}<br>%{text}<extra></extra>"))
    ridge_x = [f"{min(land.weight_decay, key=lambda w: abs(math.log(w / b))):.3g}" if math.isfinite(b) else None
               for b in land.best_weight_decay]
    fig.add_trace(go.Scatter(x=ridge_x, y=[f"{lr:.3g}" for lr in land.lr], mode="lines+markers",
                             line={"color": "crimson"}, name="λ*(η) (nearest grid value)"))
    fig.update_layout(title=f"{land.arm}: slope {_num(land.slope, '.2f')} "
                            f"[{_num(land.slope_ci[0], '.2f')}, {_num(land.slope_ci[1], '.2f')}]",
                      xaxis_title=f"weight decay λ ({land.decay})", yaxis_title="learning rate η",
                      width=520, height=440, margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"heatmap-{land.arm}")


def report_html(study: str, metric: str, lands: list[ArmLandscape], pngs, spec_text: str, title: str) -> str:
    """One HTML file, viewable offline: plotly's JavaScript is embedded, figures are inline PNGs."""
    from plotly.offline import get_plotlyjs

    from .plots import error_range

    zmin, zmax = error_range(lands)
    rows = "".join(
        f"<tr><td>{html.escape(L.arm)}</td><td>{_num(L.best['lr'])}</td><td>{_num(L.best['weight_decay'])}</td>"
        f"<td>{_num(L.best['error'], '.4f')}</td><td>{_num(L.slope, '.2f')}</td>"
        f"<td>[{_num(L.slope_ci[0], '.2f')}, {_num(L.slope_ci[1], '.2f')}]</td>"
        f"<td>{html.escape(L.predicted[1])}</td><td>{html.escape(L.ci_method)}</td></tr>" for L in lands)
    interactive = "".join(f'<div class="cell">{_plotly_heatmap(L, zmin, zmax, metric)}</div>' for L in lands)
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
</style>
<script>{get_plotlyjs()}</script></head><body>
<h1>{html.escape(title or "Weight decay vs learning rate")}: {html.escape(study)}</h1>
<section id="verdict"><h2>Verdict</h2><ul>{verdict_items}</ul>{advice}</section>
<p>Metric: final {html.escape(metric)}. λ*(η) is the best weight decay at each learning rate (the vertex of a
quadratic fit in log λ over five neighbouring columns); a row whose vertex lies beyond the grid is censored and
enters the fit as a bound. The slope is that of log λ* against log η, with a 95 % t-interval.</p>
<h2>Best setting and slope per arm</h2>
<table id="arms"><thead><tr><th>arm</th><th>best η</th><th>best λ</th><th>best {html.escape(metric)}</th>
<th>slope</th><th>95 % interval</th><th>predicted</th><th>interval from</th></tr></thead><tbody>{rows}</tbody></table>
<h2>Interactive landscapes</h2><div class="grid">{interactive}</div>
<h2>Figures</h2>{figures}
<h2>Spec</h2><pre>{html.escape(spec_text)}</pre>
</body></html>
"""


def export(uri: str, study: str, out: Path, metric: str | None = None, formats=("png", "svg", "html"),
           dashboard: str = "default", n_boot: int = 1000, log_to_mlflow: bool = True) -> tuple[list[ArmLandscape], list[Path]]:
    from .tracking import log_export, read_study

    for f in formats:
        if f not in FORMATS:
            raise SpecError(f"invalid --format: must be among {', '.join(FORMATS)}, but got {f!r}")
    dash = load_dashboard(dashboard)
    parent, spec_text, metric, members = read_study(uri, study, metric or dash.get("metric"))
    if not members:
        raise SpecError(f"invalid name: study {study!r} has no finished member runs yet")
    lands = landscapes(members, metric=metric)
    written = render(study, metric, lands, dash, Path(out), formats, spec_text)
    from .tracking import is_complete

    if log_to_mlflow and not is_complete(uri, study, len(members)):
        print(f"warning: not logged to the parent run: a half-done study's landscape is not the study's", file=sys.stderr)
        log_to_mlflow = False
    if log_to_mlflow:  # one folder per metric and dashboard: an export never replaces another's figures
        name = Path(dashboard).stem
        log_export(uri, parent, Path(out), f"landscape/{metric}/{name}",
                   metrics=parent_metrics(lands), tags={**verdict_tags(lands), f"landscape.{metric}.{name}": f"landscape/{metric}/{name}"})
    return lands, written


def summary_lines(lands: list[ArmLandscape]) -> list[str]:
    """The CLI summary: per arm its best setting (naming the metric), slope and verdict; then the pairs."""
    out = []
    verdict = study_verdict(lands)
    for L, v in zip(lands, verdict["arms"]):
        lo, hi = L.slope_ci
        out.append(f"  {L.arm:<20} best {L.metric} {_num(L.best['error'], '.4f')} at η={_num(L.best['lr'])}, "
                   f"λ={_num(L.best['weight_decay'])}; slope of log λ*(η): {_num(L.slope, '.2f')} "
                   f"[{_num(lo, '.2f')}, {_num(hi, '.2f')}] (predicted {L.predicted[1]}; {L.ci_method})")
        out.append(f"  {'':<20} verdict: {v['text']}")
        if (a := edge_advice(L)):
            out.append(f"  {'':<20} {a}")
    for p in verdict["pairs"]:
        out.append(f"  {p['text']} ({p['method']})")
    return out
