"""The exported figures and report.html: every grid value labelled, clipped colour scales marked, the ridge
in the legend, a small self-contained page, and what headless Chromium shows of it (offline, from file://)."""

import math
import re

import numpy as np
import pytest

from conftest import headless_chromium, needs_chromium
from test_landscape import scattered

from study.landscape import landscapes
from study.plots import heatmaps, ridge_figure
from study.report import DASHBOARDS, load_dashboard, render
from study.spec import shown as spelled

LRS = np.geomspace(0.01, 0.3, 6)
WDS = np.geomspace(1e-4, 1.0, 8)
ARMS = (("sgd", "coupled", -1.0, 0.0), ("sgd", "independent", 0.0, 0.0), ("adam", "decoupled", -1.0, 5.2))


def planted(arms=ARMS, lrs=LRS, wds=WDS, seeds=(0, 1), sigma=0.01, diverge=()):
    """error = 0.1 + 0.02·(log λ − log λ*(η))², λ*(η) = 3e-3·e^shift·(η/0.055)^slope; shift 5.2 puts the
    ridge beyond the high edge (censored rows). `diverge`: (arm, row, col) cells where every seed diverges."""
    rng = np.random.default_rng(0)
    out = []
    for opt, decay, slope, shift in arms:
        for seed in seeds:
            for r, lr in enumerate(lrs):
                c = math.log(3e-3) + shift + slope * math.log(lr / 0.055)
                for k, wd in enumerate(wds):
                    dead = (f"{opt}-{decay}", r, k) in diverge
                    out.append(dict(optimizer=opt, decay=decay, lr=float(lr), weight_decay=float(wd), seed=seed,
                                    error=1.0 if dead else 0.1 + 0.02 * (math.log(wd) - c) ** 2 + rng.normal(0, sigma),
                                    diverged=dead))
    return out


@pytest.fixture(scope="module")
def lands():
    return landscapes(planted(diverge={("adam-decoupled", 5, 0)}), metric="test_loss")


@pytest.fixture(scope="module")
def exported(lands, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    render("demo", "test_loss", lands, load_dashboard("default"), out, ("png", "html"), "name: demo\n")
    return out


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_title()]   # the heatmap panels (the colour bar has no title)


def _colorbar(fig):
    bars = [c.colorbar for ax in _panels(fig) for c in ax.collections if getattr(c, "colorbar", None)]
    assert len(bars) == 1   # one colour scale shared by every panel
    return bars[0]


def _labels(axis):
    return [t.get_text() for t in axis.get_ticklabels()]


def test_static_heatmaps_label_every_grid_value(lands):
    fig = heatmaps(lands, metric="test_loss")
    fig.canvas.draw()
    panels = _panels(fig)
    assert len(panels) == 3
    for ax, land in zip(panels, lands):
        for axis, values in ((ax.xaxis, land.weight_decay), (ax.yaxis, land.lr)):
            assert np.allclose(axis.get_ticklocs(), values)
            labels = _labels(axis)
            assert len(labels) == len(values) and all(labels), labels
            assert labels == [spelled(v) for v in values], labels  # one spelling: the params' and the terminal's
            assert np.allclose([float(t) for t in labels], values, rtol=5e-4), labels
            assert not axis.get_minor_locator().tick_values(*sorted(axis.get_view_interval()))  # no decade ticks
    assert _labels(panels[0].yaxis) == ["0.01", "0.01974", "0.03898", "0.07696", "0.1519", "0.3"]
    assert _labels(panels[0].xaxis)[0] == "0.0001" and _labels(panels[0].xaxis)[-1] == "1"


def test_many_grid_values_are_thinned_but_every_one_keeps_its_tick():
    wds = np.geomspace(1e-5, 1.0, 21)
    land, = landscapes(planted(arms=(ARMS[0],), wds=wds, seeds=(0,)), metric="test_loss")
    fig = heatmaps([land])
    fig.canvas.draw()
    ax, = _panels(fig)
    assert np.allclose(ax.xaxis.get_ticklocs(), wds)
    shown = [t for t in _labels(ax.xaxis) if t]
    assert 6 <= len(shown) <= 12 and shown[0] == "1e-05"
    assert _labels(ax.yaxis) == ["0.01", "0.01974", "0.03898", "0.07696", "0.1519", "0.3"]   # 6 rows: all labelled


def test_a_clipped_colour_scale_is_marked_and_diverged_cells_stay_grey(lands, exported):
    fig = heatmaps(lands, metric="test_loss")
    mesh, bar = _panels(fig)[0].collections[0], _colorbar(fig)
    top = bar.norm.vmax
    assert any(v > top for L in lands for row in L.error for v in row if math.isfinite(v))   # it clips
    assert bar.extend in ("max", "both")
    assert f"≥ {top:.3g}" in bar.ax.get_ylabel()
    # a diverged cell is masked (drawn in the grey background with a cross), never a colour of the scale
    adam = _panels(fig)[0]
    assert adam.get_title().startswith("ADAM") and np.ma.getmaskarray(mesh.get_array())[-1, 0]
    assert adam.get_facecolor()[:3] == pytest.approx((0.85, 0.85, 0.85))
    # the same in the report: an arrow on every colour bar and a top tick that says "≥ x"
    page = (exported / "report.html").read_text()
    assert page.count('class="extend-max"') == 3
    assert len(re.findall(rf'class="cbar-top"[^>]*>≥ {re.escape(f"{top:.3g}")}<', page)) == 3
    cells = re.findall(r'<rect class="cell"[^>]*fill="(#[0-9a-f]{6})"><title>([^<]*)</title>', page)
    assert len(cells) == 3 * 6 * 8
    grey = {fill for fill, tip in cells if "diverged" in tip}
    finite = {fill for fill, tip in cells if "test_loss=" in tip}
    assert len(grey) == 1 and not grey & finite


def test_an_unclipped_colour_scale_has_no_arrow(tmp_path):
    small = landscapes(planted(arms=(ARMS[0],), lrs=LRS[:3], wds=WDS[:3], seeds=(0,)), metric="test_loss")
    fig = heatmaps(small)
    assert _colorbar(fig).extend == "neither"
    render("small", "test_loss", small, {"figures": [{"kind": "heatmaps"}]}, tmp_path, ("html",))
    page = (tmp_path / "report.html").read_text()
    assert 'class="extend-max"' not in page and "≥" not in page


def test_the_ridge_has_a_legend_in_every_figure(lands, exported):
    fig = heatmaps(lands)
    for ax in _panels(fig):
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(t.startswith("fitted ridge") for t in texts), texts
    adam = _panels(fig)[0]
    assert any("best at the high edge" in t.get_text() for t in adam.get_legend().get_texts())
    assert all(any(t.get_text() == "best cell of each row (measured)" for t in ax.get_legend().get_texts())
               for ax in _panels(fig))
    texts = [t.get_text() for t in ridge_figure(lands).axes[0].get_legend().get_texts()]
    assert sum("fitted ridge" in t for t in texts) == 3
    page = (exported / "report.html").read_text()
    for land in lands:
        fig_html = page[page.index(f'id="heatmap-{land.arm}"'):]
        fig_html = fig_html[:fig_html.index("</figure>")]
        items = re.findall(r'<g class="legend-item"[^>]*>.*?<text[^>]*>([^<]*)</text></g>', fig_html)
        assert any(t.startswith("fitted ridge: slope") for t in items), items
        assert "best cell of each row (measured)" in items
        assert 'class="best-cell"' in fig_html and 'class="fit"' in fig_html
    adam_html = page[page.index('id="heatmap-adam-decoupled"'):]
    assert "best at the grid edge: optimum not bracketed" in adam_html[:adam_html.index("</figure>")]


def test_report_is_small_self_contained_and_its_captions_filled(exported, tmp_path):
    page = (exported / "report.html").read_text()
    size = (exported / "report.html").stat().st_size
    assert size < 1.5e6, size                                  # plotly.js embedded made it 5.1 MB
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(?!data:)', page)   # nothing fetched
    assert page.count("<figure><img") == 3
    for dashboard in sorted(DASHBOARDS.glob("*.yaml")):
        out = tmp_path / dashboard.stem
        lands = landscapes(planted(arms=(("sgd", "independent", 0.0, 0.0), ("adam", "independent", 0.0, 0.0)),
                                   seeds=(0,)), metric="test_loss")
        render("demo", "test_loss", lands, load_dashboard(dashboard.stem), out, ("html",))
        page = (out / "report.html").read_text()
        captions = re.findall(r"<figcaption>(.*?)</figcaption>", page) + re.findall(r'<img alt="([^"]*)"', page)
        assert captions, dashboard.stem
        for caption in captions:
            assert not re.search(r"\{\w*\}", caption), (dashboard.stem, caption)
        assert "{metric}" not in page


def test_scattered_samples_show_each_sample_and_label_the_interpolated_grid(tmp_path):
    land, = landscapes(scattered(np.random.default_rng(1), 40), metric="test_loss")
    assert not land.grid
    fig = heatmaps([land])
    fig.canvas.draw()
    ax, = _panels(fig)
    assert np.allclose(ax.xaxis.get_ticklocs(), land.weight_decay) and all(_labels(ax.xaxis))
    render("scatter", "test_loss", [land], {"figures": [{"kind": "heatmaps"}]}, tmp_path, ("html",))
    page = (tmp_path / "report.html").read_text()
    assert len(re.findall(r"<circle[^>]*><title>sample λ=[^<]*test_loss=0\.\d{4}</title>", page)) == 40




@needs_chromium
def test_report_in_headless_chromium_shows_values_on_hover(exported, lands, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chromium()
    try:
        driver.get((exported / "report.html").as_uri())
        wait = WebDriverWait(driver, 20)
        n_cells = sum(len(L.lr) * len(L.weight_decay) for L in lands)
        wait.until(lambda d: d.execute_script(
            "return document.readyState === 'complete' && "
            "document.querySelectorAll('figure.heatmap svg rect.cell').length") == n_cells)
        assert driver.execute_script(
            "return performance.getEntriesByType('resource').filter(e => !e.name.startsWith('data:')).length") == 0
        figures = driver.find_elements(By.CSS_SELECTOR, "figure.heatmap")
        assert [f.get_attribute("id") for f in figures] == [f"heatmap-{L.arm}" for L in lands]
        for f in figures:   # drawn, and the title lies wholly inside its drawing (nothing clips or covers it)
            box = driver.execute_script(
                "const s = arguments[0].querySelector('svg'), t = s.querySelector('text.title').getBBox();"
                "return [t.x, t.y, t.width, t.height, s.width.baseVal.value, s.height.baseVal.value];", f)
            assert box[2] > 50 and box[0] >= 0 and box[0] + box[2] <= box[4] and box[1] >= 0, box
            assert f.size["width"] > 300 and f.size["height"] > 300
        # every cell's hover text (its <title>) holds the value; the best cell's is the best test_loss
        adam = lands[0]
        r, c = np.unravel_index(np.nanargmin(np.array(adam.error, float)), np.array(adam.error).shape)
        cell = figures[0].find_elements(By.CSS_SELECTOR, "rect.cell")[r * len(adam.weight_decay) + c]
        tip = driver.execute_script("return arguments[0].querySelector('title').textContent", cell)
        assert tip == f"λ={spelled(adam.weight_decay[c])}, η={spelled(adam.lr[r])}: test_loss={adam.best['error']:.4f}"
        readout = figures[0].find_element(By.CSS_SELECTOR, ".readout")
        ActionChains(driver).move_to_element(cell).perform()
        wait.until(lambda d: readout.text == tip)
        driver.execute_script("arguments[0].scrollIntoView()", figures[0])
        driver.save_screenshot(str(tmp_path / "report-heatmaps.png"))
        assert (tmp_path / "report-heatmaps.png").stat().st_size > 10_000
    finally:
        driver.quit()


def test_a_missing_or_unbounded_number_is_spelled_alike_in_terminal_report_and_figures():
    """n/a for a missing value and ±∞ for an unbounded interval end, wherever a person reads it."""
    from types import SimpleNamespace

    from study.landscape import fmt_number
    from study.plots import _fmt_ci
    from study.report import _num
    for v, spelled in ((math.nan, "n/a"), (None, "n/a"), (-math.inf, "−∞"), (math.inf, "+∞"), (0.5, "0.50")):
        assert fmt_number(v) == _num(v, ".2f") == spelled
    assert _fmt_ci(SimpleNamespace(slope=0.3, slope_ci=(-math.inf, 0.5))) == "slope 0.30 [−∞, 0.50]"
    assert _fmt_ci(SimpleNamespace(slope=math.nan, slope_ci=(math.nan, math.nan))) == "slope n/a"


def test_a_figure_naming_arms_the_study_lacks_says_so(lands, tmp_path, capsys):
    """A dashboard may list arms a study lacks (sgd_vs_adam on an SGD-only study): the figure is drawn with those
    it has, or not at all, and a warning names the missing arms; nothing is dropped silently."""
    have = sorted(L.arm for L in lands)
    dash = tmp_path / "d.yaml"
    dash.write_text(f"figures:\n  - {{kind: ridge, name: some, arms: [{have[0]}, adam-nosuch]}}\n"
                    f"  - {{kind: ridge, name: none, arms: [lion-nosuch]}}\n")
    written = render("demo", "test_loss", lands, load_dashboard(str(dash)), tmp_path / "out", ("png",))
    err = capsys.readouterr().err
    assert "'some' names arms this study lacks (adam-nosuch): drawn with " + have[0] in err
    assert "'none' names arms this study lacks (lion-nosuch): not drawn" in err
    assert {p.name for p in written} >= {"some.png"} and not (tmp_path / "out" / "none.png").exists()


# ---------------------------------------------------------------------------------------- the article's claims

def test_the_export_measures_the_claims_on_the_study(smoke_study):
    """claims.json and the report's section, from a real finished study: the plain-SGD identities on the
    study's model (exact without momentum, apart with it), and per arm its best cell over seeds, the tensor
    counts and the regime, each agreeing with what landscape.json and the members recorded."""
    import json

    export = smoke_study.home / "quickstart-smoke" / "export"
    claims = json.loads((export / "claims.json").read_text())
    land = json.loads((export / "landscape.json").read_text())
    sgd = {r["momentum"]: r for r in claims["sgd"]}
    assert sgd[0.0]["coupled_vs_decoupled"] < 1e-12 and sgd[0.0]["decoupled_vs_independent"] < 1e-12
    assert sgd[0.9]["coupled_vs_decoupled"] > 1e-4            # coupled decay goes through the momentum buffer
    assert sgd[0.9]["decoupled_vs_independent"] < 1e-12       # decoupled(λ) ≡ independent(η·λ) with momentum too
    assert [a["arm"] for a in claims["arms"]] == [f"{a['optimizer']}-{a['decay']}" for a in land["arms"]]
    for a, L in zip(claims["arms"], land["arms"]):
        assert a["seeds"] >= 1 and (a["lr"], a["weight_decay"]) == (L["best"]["lr"], L["best"]["weight_decay"])
        assert math.isclose(a["error"], L["best"]["error"], rel_tol=1e-9)
        assert a["decayed_tensors"] > 0 and a["no_decay_tensors"] > 0
        assert a["angular_ratio_mid"] is not None and a["angular_ratio_mid"] > 0   # SGD arms state an equilibrium
        assert "equilibrium" in a["regime"]
        assert 0 < a["train_loss"] < 10       # the best cell's final training loss, mean over its seeds
    page = (export / "report.html").read_text()
    assert "final train loss" in page
    assert 'id="claims"' in page and 'id="sgd-identity"' in page


def test_the_outcome_correlation_is_compared_in_words_whatever_it_shows():
    from study.claims import regime
    from study.report import claims_html

    def arm(name, corr):
        return {"arm": name, "lr": 0.01, "weight_decay": 0.1, "seeds": 2, "error": 0.1, "error_spread": 0.01,
                "decayed_tensors": 8, "no_decay_tensors": 15, "decay_spread": 1.0, "norm_sqrt_v_corr": corr,
                "predicted": "p", "slope": -1.0, "slope_ci": [-1.2, -0.8], "outcome": "consistent",
                "regime": regime(float("nan"))}

    def page(c, d, spread=0.05, seeds=2):
        arms = [{**arm("adam-coupled", c), "norm_sqrt_v_corr_spread": spread, "seeds": seeds},
                {**arm("adam-decoupled", d), "norm_sqrt_v_corr_spread": spread, "seeds": seeds}]
        return claims_html({"sgd": None, "arms": arms}, "test_loss")

    assert "higher under coupled decay, beyond the seeds' half-ranges, as the article predicts" in page(0.8, -0.2)
    assert "lower under coupled decay, beyond the seeds' half-ranges, against the article" in page(-0.3, 0.1)
    assert "no clear difference" in page(0.3, 0.25)                 # 0.05 apart, half-ranges 0.05 each
    assert "one seed: no spread" in page(0.8, -0.2, spread=0.0, seeds=1)
    assert regime(0.5).startswith("below") and regime(2.0).startswith("above") and regime(1.2).startswith("near")


def test_the_live_landscape_reads_slopes_only_from_finished_rows():
    """A cell not finished yet holds no value, which the landscape would read as worse than its neighbours: a row
    whose only finished cell is its middle one would show a bracketed optimum. The live page draws the whole grid
    but fits and marks only rows whose every cell is in; a sampler's scattered points are drawn as the report does."""
    from study.report import _live_landscapes, _planned_cells
    from study.spec import grid_axis, spec_from_dict

    raw = {"name": "live", "search": {"sampler": "grid", "seeds": [0]},
           "arms": [{"optimizer": "sgd", "decay": "coupled", "lr": {"low": 0.01, "high": 0.1, "points": 3},
                     "weight_decay": {"low": 1e-3, "high": 1e-1, "points": 3}}]}
    spec = spec_from_dict(raw)
    lrs, wds = grid_axis(spec.arms[0].lr, 3), grid_axis(spec.arms[0].weight_decay, 3)
    cell = lambda lr, wd, e: {"optimizer": "sgd", "decay": "coupled", "lr": lr, "weight_decay": wd, "seed": 0,  # noqa: E731
                              "error": e, "diverged": False, "run_id": None, "total_steps": 100}
    members = [cell(lrs[0], wd, e) for wd, e in zip(wds, (0.5, 0.3, 0.6))]   # row 0: done, bracketed
    members += [cell(lrs[1], wds[1], 0.2)]                                    # row 1: only its middle cell
    members += [cell(lrs[2], wd, e) for wd, e in zip(wds, (0.4, 0.25, 0.45))]  # row 2: done, bracketed
    assert len(_planned_cells(members, spec)) == 2
    done = {("sgd", "coupled", m["lr"], m["weight_decay"]): 1 for m in members}
    (heat,), (fit,) = _live_landscapes(members, spec, "test_loss", done)
    assert heat.lr == lrs and len(heat.weight_decay) == 3  # the whole grid is drawn
    assert fit.lr == [lrs[0], lrs[2]]  # fitted on the finished rows only
    assert heat.censored[1] is None and math.isnan(heat.best_weight_decay[1])  # no optimum shown for row 1
    assert heat.best_weight_decay[0] == fit.best_weight_decay[0] and heat.slope == fit.slope or \
        (math.isnan(heat.slope) and math.isnan(fit.slope))
    # a sampler's points: nothing is planned, nothing pending, the landscape as the report draws it
    tpe = spec_from_dict({**raw, "search": {"sampler": "tpe", "trials": 7, "seeds": [0]},
                          "arms": [{**raw["arms"][0], "lr": {"low": 0.01, "high": 0.1},
                                    "weight_decay": {"low": 1e-3, "high": 1e-1}}]})
    assert _planned_cells(members, tpe) == []
    (heat,), (fit,) = _live_landscapes(members, tpe, "test_loss", done)
    assert not heat.grid and heat is fit


def test_the_sgd_identity_is_computed_once_per_model_and_code(tmp_path, monkeypatch):
    """The claims' float64 identity steps depend only on the model, torch and the model and optimizer code: an
    export reads them from the cache after the first; another width (or code) computes them anew; an unwritable
    cache is passed by."""
    import study.claims as claims

    monkeypatch.setenv("STUDY_CACHE", str(tmp_path / "cache"))
    first = claims.cached_sgd_identity("resnet8", 1)
    assert first == claims.sgd_identity("resnet8", 1)  # the same numbers as computing them
    assert len(list((tmp_path / "cache").glob("sgd-identity-*.json"))) == 1

    def never(*a, **k):
        raise AssertionError("computed again")
    monkeypatch.setattr(claims, "sgd_identity", never)
    assert claims.cached_sgd_identity("resnet8", 1) == first  # read back
    with pytest.raises(AssertionError, match="computed again"):
        claims.cached_sgd_identity("resnet8", 2)  # another model: not the cached one
    monkeypatch.undo()
    monkeypatch.setenv("STUDY_CACHE", "/dev/null/cache")  # cannot be written: computed, not a failure
    assert claims.cached_sgd_identity("resnet8", 1) == first


def test_the_ui_serves_a_studys_exported_report_or_says_how_to_make_it(tmp_path):
    """`study ui`'s /study/NAME/report: the home's exported report.html as it is, a 404 line naming the commands
    that write it when there is none, and a 404 for a name no study could have."""
    from study.ui import _page

    status, body = _page("", tmp_path, "/study/s1/report")
    assert status == 404 and b"study export s1 --out" in body
    (tmp_path / "s1" / "export").mkdir(parents=True)
    (tmp_path / "s1" / "export" / "report.html").write_text("<html>the report</html>")
    assert _page("", tmp_path, "/study/s1/report?x=1") == (200, b"<html>the report</html>")
    status, body = _page("", tmp_path, "/study/..%2Fs1/report")
    assert status == 404 and b"invalid name" in body


def test_the_channel_figure_draws_each_arms_decay_rate_and_norms_against_sqrt_v():
    """(b)'s figure: the left panel's points are η·λ/√v̂ for coupled Adam and η·λ (decoupled) or λ (independent)
    whatever √v̂; the right panel's are norm and √v̂ over their tensor's median; no figure when no arm recorded
    its channels (SGD, or runs from before them)."""
    import numpy as np

    from study.plots import channels_figure

    ch = {"seed": 0, "sqrt_v": [[1e-3, 2e-3, 4e-3], [1e-4, 2e-4, 3e-4, 5e-4]], "norm": [[1.0, 2.0, 3.0], [4.0, 3.0, 2.0, 1.0]]}
    arms = [{"arm": f"adam-{d}", "optimizer": "adam", "decay": d, "lr": 0.01, "weight_decay": 0.1, "channels": ch}
            for d in ("coupled", "decoupled", "independent")] + [{"arm": "sgd-coupled", "channels": None}]
    fig = channels_figure(arms)
    left, right = fig.axes[:2]
    roots = np.array([1e-3, 2e-3, 4e-3, 1e-4, 2e-4, 3e-4, 5e-4])
    coupled, decoupled, independent = (c.get_offsets() for c in left.collections)
    np.testing.assert_allclose(coupled[:, 0], roots)
    np.testing.assert_allclose(coupled[:, 1], 0.01 * 0.1 / roots)
    np.testing.assert_allclose(decoupled[:, 1], 0.001)
    np.testing.assert_allclose(independent[:, 1], 0.1)
    points = right.collections[0].get_offsets()
    np.testing.assert_allclose(points[:, 0], np.concatenate([[0.5, 1, 2], roots[3:] / 2.5e-4]))
    np.testing.assert_allclose(points[:, 1], [0.5, 1, 1.5, 4 / 2.5, 3 / 2.5, 2 / 2.5, 1 / 2.5])
    labels = [t.get_text() for t in right.get_legend().get_texts()]
    assert labels[0] == "adam-coupled: rank correlation +0.00"  # +1 in one tensor, −1 in the other
    assert channels_figure([{**a, "channels": None} for a in arms]) is None
