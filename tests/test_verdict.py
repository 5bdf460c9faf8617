"""The study's answer: verdicts per arm and pair, what the parent run and the report carry, `study recommend`.

The CLI tests record a small planted study in a real SQLite MLflow store, with the tags, params and
metrics study/tracking.py writes (no Ray, no training), and run `study.cli.main` in this process.
"""

import json
import math

import numpy as np
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import _validate_metric_name, _validate_tag_name

from study.cli import main
from study.landscape import MARGIN, arm_verdict, compare_arms, landscapes, parent_metrics, study_verdict, verdict_tags
from study.report import render, summary_lines

LRS = np.geomspace(0.01, 0.3, 5)
WDS = np.geomspace(1e-4, 1.0, 7)


def planted(rng, seeds, sigma, arms, lrs=LRS, wds=WDS, shift=0.0):
    members = []
    for opt, decay, slope in arms:
        for s in seeds:
            for lr in lrs:
                c = math.log(3e-3) + shift + slope * math.log(lr / 0.055)
                for wd in wds:
                    members.append(dict(optimizer=opt, decay=decay, lr=float(lr), weight_decay=float(wd), seed=s,
                                        error=0.1 + 0.02 * (math.log(wd) - c) ** 2 + rng.normal(0, sigma),
                                        diverged=False))
    return members


SGD_ARMS = (("sgd", "coupled", -1.0), ("sgd", "independent", 0.0))


# --------------------------------------------------------------------------- verdicts


def test_verdicts_consistent_and_the_pair_differs():
    coupled, independent = landscapes(planted(np.random.default_rng(0), [0, 1, 2], 0.01, SGD_ARMS), metric="test_loss")
    for land in (coupled, independent):
        v = arm_verdict(land)
        assert v["outcome"] == "consistent", v
        assert v["text"].startswith("consistent with the prediction")
    (pair,) = compare_arms([coupled, independent])
    assert pair["arms"] == ["sgd-coupled", "sgd-independent"] and pair["predicted_difference"] == -1.0
    assert pair["outcome"] == "differ" and pair["ci"][1] < 0
    assert "excludes 0" in pair["text"] and "holds the predicted -1" in pair["text"]
    assert pair["method"] == "the two valley fits combined as independent (Welch)"


def test_verdict_contradicts_and_no_prediction():
    arms = (("sgd", "independent", -1.0), ("adam", "coupled", -1.0))
    adam, sgd = landscapes(planted(np.random.default_rng(1), [0, 1], 0.01, arms))
    v = arm_verdict(sgd)
    assert v["outcome"] == "contradicts" and v["text"].startswith("contradicts it:") and "predicted 0" in v["text"]
    v = arm_verdict(adam)
    assert v["outcome"] == "no prediction" and "no clean law" in v["text"]


def test_verdict_inconclusive_says_what_would_decide_it():
    (land,) = landscapes(planted(np.random.default_rng(2), [0], 0.15, (("sgd", "coupled", -0.5),)))
    v = arm_verdict(land)
    lo, hi = land.slope_ci
    assert lo < -1 and hi > 0, land.slope_ci                  # the planted noise leaves both laws open
    assert v["outcome"] == "inconclusive" and v["text"].startswith("inconclusive at this budget")
    seeds_item = next(d for d in v["decide"] if "seeds" in d)
    seeds = int(seeds_item.split()[1])
    assert seeds > 1 and seeds_item == f"about {seeds} seeds (now 1)"
    n = land.ridge_fit["rows_measured"]
    assert any(f"learning rates (now {n})" in d or "learning-rate range" in d for d in v["decide"])
    assert any("wider weight_decay grid" in d for d in v["decide"]) == any(land.censored)
    # the advice is the arithmetic of the interval: that many seeds shrink ±half to the half-width that would
    # clear the band −1 ± MARGIN or fit inside it, about | |slope + 1| − MARGIN | (at least MARGIN/2)
    target = max(abs(abs(land.slope + 1) - MARGIN), MARGIN / 2)
    assert f"(interval ±{target:.2g})" in v["text"]
    assert (hi - lo) / 2 / math.sqrt(seeds) <= target < (hi - lo) / 2 / math.sqrt(seeds - 1)


def test_parent_metrics_and_tags_have_valid_mlflow_names():
    lands = landscapes(planted(np.random.default_rng(3), [0, 1], 0.01, SGD_ARMS), metric="test_loss")
    m = parent_metrics(lands)
    for arm in ("sgd-coupled", "sgd-independent"):
        for k in ("slope", "ci_low", "ci_high", "best_lr", "best_weight_decay", "best_test_loss"):
            assert math.isfinite(m[f"{arm}.{k}"])
    assert m["sgd-coupled.slope"] == float(f"{lands[0].slope:.4g}") and m["sgd-coupled.ci_high"] == \
        float(f"{lands[0].slope_ci[1]:.4g}")  # rounded as shown; landscape.json keeps the exact values
    assert m["sgd-coupled.best_test_loss"] == float(f"{lands[0].best['error']:.4g}")
    assert "sgd-coupled_minus_sgd-independent.slope_difference" in m
    for k in m:
        _validate_metric_name(k)
    tags = verdict_tags(lands)
    assert tags["verdict.sgd-coupled"].startswith("consistent with the prediction")
    assert "excludes 0" in tags["verdict.sgd-coupled_minus_sgd-independent"]
    for k in tags:
        _validate_tag_name(k)


def test_report_json_html_and_summary_carry_the_verdict(tmp_path):
    lands = landscapes(planted(np.random.default_rng(4), [0, 1], 0.01, SGD_ARMS, shift=0.0)
                       + planted(np.random.default_rng(5), [0, 1], 0.01, (("adam", "decoupled", -1.0),), shift=5.2),
                       metric="test_loss")
    dash = {"figures": [{"kind": "heatmaps"}, {"kind": "ridge"}]}
    render("demo", "test_loss", lands, dash, tmp_path, ("png", "html"))
    doc = json.loads((tmp_path / "landscape.json").read_text())
    assert [v["outcome"] for v in doc["verdict"]["arms"]] == ["consistent"] * 3
    assert len(doc["verdict"]["pairs"]) == 3 and len(doc["verdict"]["lines"]) == 6
    adam = doc["arms"][0]
    assert adam["censored"][0] == "high" and adam["edge_advice"].startswith("best λ at the edge in")
    assert adam["refine_weight_decay"][0] > 1.0 and adam["ridge_fit"]["rows_censored_high"] >= 1
    page = (tmp_path / "report.html").read_text()
    assert page.index('id="verdict"') < page.index('id="arms"')
    # the observed best cell of each row and the fitted ridge: two marks, both in the legend
    assert page.count('class="best-cell"') == sum(len(L.lr) for L in lands)
    assert "best cell of each row (measured)" in page and "(valley model)" in page and 'class="fit"' in page
    assert "consistent with the prediction" in page and "extend weight_decay.high to about" in page
    lines = summary_lines(lands)
    assert "best test_loss" in lines[0] and "best error" not in "\n".join(lines)
    # every shipped dashboard's captions and titles name the metric: no raw {metric} placeholder anywhere
    from study.report import DASHBOARDS, load_dashboard

    for dashboard in sorted(DASHBOARDS.glob("*.yaml")):
        render("demo", "test_loss", lands, load_dashboard(dashboard.stem), tmp_path / dashboard.stem, ("svg", "html"))
        page = (tmp_path / dashboard.stem / "report.html").read_text()
        assert "{metric}" not in page, dashboard.stem
    assert any(line.strip().startswith("verdict: consistent with the prediction") for line in lines)
    assert any("extend weight_decay.high" in line for line in lines)
    assert any(line.strip().startswith("sgd-coupled − sgd-independent: slope difference") for line in lines)


# --------------------------------------------------------------------------- study recommend on MLflow records


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A recorded study 'demo' (SGD coupled and independent, 5 lr × 6 λ × 1 seed) in a SQLite MLflow store."""
    root = tmp_path_factory.mktemp("records")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("demo", artifact_location=(root / "artifacts").as_uri(), tags={"study": "demo"})
    parent = client.create_run(exp, run_name="demo", tags={"study": "demo", "role": "parent"}).info.run_id
    client.log_batch(parent, params=[Param("study", "demo"), Param("metric", "test_loss"),
                                     Param("arms", "sgd-coupled,sgd-independent")])
    for m in planted(np.random.default_rng(6), [0], 0.005, SGD_ARMS, wds=np.geomspace(1e-4, 1.0, 6)):
        arm = f"{m['optimizer']}-{m['decay']}"
        key = f"demo|{arm}|{m['lr']}|{m['weight_decay']}|{m['seed']}"
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "study": "demo", "role": "member",
                                           "member_key": key, "arm": arm}).info.run_id
        params = {k: m[k] for k in ("optimizer", "decay", "lr", "weight_decay", "seed")}
        params.update(steps_per_epoch=12, total_steps=480, epochs=40)
        client.log_batch(run, params=[Param(k, str(v)) for k, v in params.items()],
                         metrics=[Metric("final_test_loss", m["error"], 0, 0),
                                  Metric("final_test_error", 0.02, 0, 0), Metric("final_diverged", 0.0, 0, 0)],
                         tags=[RunTag("diverged", "false")])
        client.set_terminated(run, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return uri, client, parent


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_recommend_prints_lambda_star_its_interval_and_timescale(store, capsys):
    uri = store[0]
    rc, out, err = _run(capsys, "recommend", "demo", "--lr", "0.05", "--tracking-uri", uri)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("study demo (final test_loss): best weight decay at η=0.05")
    coupled = next(line for line in lines if line.strip().startswith("sgd-coupled"))
    independent = next(line for line in lines if line.strip().startswith("sgd-independent"))
    lam = float(coupled.split("λ* = ")[1].split()[0])
    assert lam == pytest.approx(3e-3 * 0.055 / 0.05, rel=0.1)
    lo, hi = (float(v) for v in coupled.split("[")[1].split("]")[0].split(","))
    assert lo < lam < hi
    assert f"η·λ* = {0.05 * lam:.3g}" in coupled or "η·λ* = " in coupled
    assert "τ = 1/(η·λ)" in coupled and "the run's 480 steps" in coupled
    assert "τ = 1/λ" in independent and "η·λ*" not in independent
    assert float(independent.split("λ* = ")[1].split()[0]) == pytest.approx(3e-3, rel=0.1)
    verdicts = [line.split("verdict: ", 1)[1] for line in lines if line.strip().startswith("verdict: ")]
    assert len(verdicts) == 2 and all(v.startswith("consistent with the prediction") for v in verdicts)
    assert not any("warning:" in line for line in lines)

    rc, out, _ = _run(capsys, "recommend", "demo", "--lr", "0.1", "--arm", "sgd-independent", "--tracking-uri", uri)
    assert rc == 0 and "sgd-independent" in out and "sgd-coupled" not in out


@pytest.mark.parametrize("argv,message", [
    (["recommend", "nosuch", "--lr", "0.05"], "invalid name: no study 'nosuch'"),
    (["recommend", "demo", "--lr", "0.05", "--arm", "adam-coupled"], "invalid --arm: study 'demo' has arms"),
    (["recommend", "demo", "--lr", "0.5"], "invalid --lr: 0.5 is outside the learning rates where every arm"),
    (["recommend", "demo", "--lr", "0.001", "--arm", "sgd-coupled"], "invalid --lr: 0.001 is outside the learning rates"),
    (["recommend", "demo", "--lr", "abc"], "invalid --lr: expected a number, but got lr='abc'"),
    (["recommend", "demo", "--lr", "nan"], "invalid --lr: a learning rate is a finite number > 0"),
    (["recommend", "demo", "--lr", "-0.1"], "invalid --lr: a learning rate is a finite number > 0"),
    (["recommend", "demo", "--lr", "0.05", "--metric", "nosuch"], "invalid --metric: 'nosuch' is not a landscape"),
    (["recommend", "demo", "--lr", "0.05", "--metric", "lr"], "invalid --metric: 'lr' is not a landscape metric"),
    (["recommend", "demo", "--lr", "0.05", "--metric", "diverged"], "invalid --metric: 'diverged' is not a landscape"),
])
def test_recommend_refuses_bad_input_with_one_line(store, capsys, argv, message):
    rc, out, err = _run(capsys, *argv, "--tracking-uri", store[0])
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"study: error: {message}"), err


def test_recommend_without_records_refuses(tmp_path, capsys):
    rc, _, err = _run(capsys, "recommend", "demo", "--lr", "0.05", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert rc == 2 and err.count("\n") == 1 and "invalid name" in err
    assert not (tmp_path / "none.db").exists()


def test_parent_metrics_and_tags_log_to_a_parent_run(store):
    uri, client, parent = store
    from study.tracking import read_study

    _, _, metric, members = read_study(uri, "demo")
    lands = landscapes(members, metric=metric)
    metrics, tags = parent_metrics(lands), verdict_tags(lands)
    client.log_batch(parent, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    data = client.get_run(parent).data
    assert data.metrics["sgd-coupled.best_test_loss"] == float(f"{lands[0].best['error']:.4g}")
    assert data.tags["verdict.sgd-independent"] == tags["verdict.sgd-independent"]


def test_decoupled_minus_independent_is_printed_as_a_self_check():
    """decoupled(η, λ) ≡ independent(η, η·λ): the pair's slopes differ by exactly −1 by the update rules, so the
    difference tests the estimator and is never reported as a finding."""
    lands = landscapes(planted(np.random.default_rng(11), [0, 1], 0.01,
                               (("adam", "decoupled", -1.0), ("adam", "independent", 0.0))), metric="test_loss")
    (pair,) = compare_arms(lands)
    assert pair["identity"] == -1.0 and pair["outcome"] == "self-check holds", pair
    assert "self-check, not a finding" in pair["text"] and "exactly -1" in pair["text"]
    broken = landscapes(planted(np.random.default_rng(12), [0, 1], 0.01,
                                (("adam", "decoupled", -1.0), ("adam", "independent", -1.0))), metric="test_loss")
    (bad,) = compare_arms(broken)
    assert bad["outcome"] == "self-check fails" and "EXCLUDES" in bad["text"]
    (other,) = compare_arms(landscapes(planted(np.random.default_rng(13), [0, 1], 0.01, SGD_ARMS)))
    assert other["identity"] is None and "self-check" not in other["text"]


def test_every_registered_optimizer_and_decay_has_its_prediction():
    """The predictions live in each optimizer's registry entry: a new optimizer cannot come without them
    (Lion once printed "unknown"). Decoupled −1 and independent 0 for all; coupled −1 for plain SGD only."""
    from study.landscape import ArmLandscape
    from study.registry import DECAY_MODES, OPTIMIZERS

    for opt in OPTIMIZERS:
        for decay in DECAY_MODES:
            land = ArmLandscape(opt, decay, [0.1], [0.1], [[0.1]], [[0.0]], [0], [0.1], float("nan"),
                                [float("nan")] * 2, "", {})
            slope, text = land.predicted
            assert text != "unknown", (opt, decay)
            assert slope == {"decoupled": -1.0, "independent": 0.0}.get(decay, -1.0 if opt == "sgd" else None), (opt, decay)


def test_export_writes_the_answer_into_the_parent_runs_description_once_per_metric(store, tmp_path):
    """MLflow shows a run's description first: after `study export` it holds the user's description and, per
    metric, the verdict lines and where the report is; exporting again replaces that metric's answer."""
    from study.report import export
    from study.tracking import NOTE_LIMIT, note_with_answer

    uri, client, parent = store
    client.set_tag(parent, "mlflow.note.content", "Coupled vs independent, planted.")
    lands, _ = export(uri, "demo", tmp_path / "a", formats=("html",))
    export(uri, "demo", tmp_path / "b", formats=("html",))
    export(uri, "demo", tmp_path / "c", metric="test_error", formats=("html",))
    note = client.get_run(parent).data.tags["mlflow.note.content"]
    assert note.startswith("Coupled vs independent, planted.\n\n## Answer: final test_loss\n")
    assert note.count("## Answer: final test_loss") == 1 and note.count("## Answer: final test_error") == 1
    for line in study_verdict(lands)["lines"]:
        assert f"- {line}\n" in note
    assert "`landscape/test_loss/default/report.html`" in note
    long = note_with_answer("d" * 9000, "test_loss", ["sgd-coupled: consistent"], "r.html")
    assert len(long) == NOTE_LIMIT and long.endswith("`r.html`.") and "…\n\n## Answer" in long


@pytest.mark.parametrize("slope, ci, outcome", [
    (-0.07, (-0.10, -0.01), "consistent"),    # excludes 0 exactly, but is about 0: a measured quickstart run
    (-0.00, (-0.08, 0.07), "consistent"),
    (0.16, (-0.03, 0.34), "inconclusive"),    # holds 0, and also slopes a quarter of the way to the other law
    (0.30, (0.21, 0.42), "inconclusive"),     # excludes 0, but reaches into "about 0"
    (0.45, (0.30, 0.60), "contradicts"),
    (-0.60, (-0.90, -0.30), "contradicts"),
    (0.0, (-0.80, 0.80), "inconclusive"),     # wider than the band
])
def test_a_law_is_about_its_value_within_the_margin(slope, ci, outcome):
    """The verdict tests "about 0" as 0 ± MARGIN: an interval inside the band is consistent, one wholly outside
    contradicts, one across its edge decides nothing; a point law would call the first case a contradiction."""
    import dataclasses

    (land,) = [L for L in landscapes(planted(np.random.default_rng(4), [0, 1], 0.01, SGD_ARMS)) if L.decay == "independent"]
    v = arm_verdict(dataclasses.replace(land, slope=slope, slope_ci=list(ci)))
    assert v["outcome"] == outcome, v["text"]
    assert v["decisive"] == (outcome != "inconclusive")
    if outcome == "consistent":
        assert "lies within the predicted 0 ± 0.25 and excludes -1" in v["text"]
