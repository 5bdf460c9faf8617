"""End to end: `study run` on a real local Ray, a real Optuna SQLite storage and a real MLflow SQLite store."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.spec import grid_axis, load_spec, planned_members
from study.tracking import EPOCH_KEYS

EPOCHS = 2
PER_EPOCH = ("train_loss", "test_loss", "test_error", "weight_norm", "effective_lr", "angular_update",
             "wall_time", "diverged")
PARAMS = ("optimizer", "decay", "lr", "weight_decay", "seed", "model", "data", "epochs", "batch_size",
          "lr_x_weight_decay", "decay_timescale_steps", "decay_timescale_epochs")


def write_spec(path: Path, name: str, small: bool = False, **execution) -> Path:
    """The tests' study: 2 arms × 2 × 2 grid × 2 seeds = 16 members, or `small`: 1 arm, 1 seed = 4 members."""
    spec = {
        "name": name,
        "data": {"dataset": "digits", "train_subset": 96, "test_subset": 64},
        "model": {"name": "resnet8"},
        "train": {"epochs": EPOCHS, "batch_size": 32, "device": "cpu"},
        "arms": [
            {"optimizer": "sgd", "decay": "coupled", "lr": {"low": 0.01, "high": 0.1},
             "weight_decay": {"low": 0.001, "high": 0.1}},
            {"optimizer": "adam", "decay": "independent", "lr": {"low": 0.001, "high": 0.01},
             "weight_decay": {"low": 0.001, "high": 0.01}},
        ],
        "search": {"sampler": "grid", "points": 2, "seeds": [0, 1]},
        "execution": {"members_per_trial": 3, "cpus_per_trial": 1, **execution},
    }
    if small:
        spec["arms"], spec["search"]["seeds"] = spec["arms"][:1], [0]
    path.write_text(yaml.safe_dump(spec))
    return path


def study_cmd(home: Path, *args) -> list[str]:
    return [sys.executable, "-m", "study.cli", "--home", str(home), *args]


def run_ok(home, *args, env=None, timeout=300, unset=()):
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    out = subprocess.run(study_cmd(home, *args), capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def check_records(home: Path, spec_path: Path, tracking_uri: str | None = None, storage: str | None = None,
                  data_path: str | None = None) -> dict:
    """Exactly N member runs under one parent, full params, one value per epoch; N finished Optuna trials."""
    spec = load_spec(spec_path, data_path)
    n = planned_members(spec)  # arms × lr points × weight_decay points × seeds
    client = MlflowClient(tracking_uri or f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "parent"]
    members = [r for r in runs if r.data.tags.get("role") == "member"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(members) == n, f"{len(members)} member runs for {n} members"
    assert Counter(r.data.tags["member_key"] for r in members).most_common(1)[0][1] == 1
    for r in members:
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert r.info.status == "FINISHED"
        assert set(PARAMS) <= set(r.data.params), set(PARAMS) - set(r.data.params)
        for key in PER_EPOCH:  # grouped MLflow keys: train/loss, test/error, decay/weight_norm, …
            steps = [m.step for m in client.get_metric_history(r.info.run_id, EPOCH_KEYS[key])]
            assert sorted(steps) == list(range(1, spec.train.epochs + 1)), (key, steps)
        assert "final_test_error" in r.data.metrics
    storage = storage or f"sqlite:///{home / spec.name / 'optuna.db'}"
    total = 0
    for arm in spec.arms:
        trials = optuna.load_study(study_name=f"{spec.name}.{arm.name}", storage=storage).get_trials()
        # a trial is one attempt: attempts of a killed driver are closed as FAIL; every member completes once
        assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL) for t in trials)
        trials = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        grid = {(lr, wd, s) for lr in grid_axis(arm.lr, 2) for wd in grid_axis(arm.weight_decay, 2)
                for s in spec.search.seeds}
        assert all(set(t.params) == {"lr", "weight_decay"} for t in trials)  # the seed is repeated, not searched
        for t in trials:  # learning curves for the dashboards (a trial rebuilt from MLflow has none)
            steps = set(t.intermediate_values)
            cadence = {e for e in range(1, spec.train.epochs + 1)
                       if e % spec.tracking.curve_every == 0 or e == spec.train.epochs}  # tracking.curve_every
            assert "rebuilt_from" in t.user_attrs or (spec.train.epochs in steps and steps <= cadence), steps
        seen = [(t.params["lr"], t.params["weight_decay"], t.user_attrs["seed"]) for t in trials]
        assert sorted(seen) == sorted(grid)  # every grid point exactly once per seed
        total += len(trials)
    assert total == n
    check_settings(runs, spec, storage)
    return {"runs": members, "client": client, "parent": parents[0]}


def check_settings(runs, spec, storage: str) -> None:
    """One seed-averaged setting record per arm and (lr, weight_decay), in MLflow and in the arm's settings study:
    its value the mean of its seeds' member runs (the landscape's cell), linked to them, never counted as members."""
    import math

    members = [r for r in runs if r.data.tags.get("role") == "member"]
    settings = [r for r in runs if r.data.tags.get("role") == "setting"]
    groups: dict[str, list] = {}
    for r in members:
        groups.setdefault(r.data.tags["member_key"].rsplit("|seed=", 1)[0], []).append(r)
    assert sorted(r.data.tags["setting_key"] for r in settings) == sorted(groups)  # each once, none missing
    metric = spec.search.metric
    for r in settings:
        seeds = groups[r.data.tags["setting_key"]]
        assert len(seeds) == len(spec.search.seeds) and r.info.status == "FINISHED"
        assert sorted(r.data.tags["member_runs"].split(",")) == sorted(m.info.run_id for m in seeds)
        assert r.data.tags["mlflow.parentRunId"] == seeds[0].data.tags["mlflow.parentRunId"]
        ok = [m.data.metrics[f"final_{metric}"] for m in seeds if m.data.tags.get("diverged") != "true"]
        if ok:
            assert r.data.metrics[f"final_{metric}"] == pytest.approx(sum(ok) / len(ok), rel=1e-12)
        # the same params as its members (the optimizer's own settings too), `seeds` in place of `seed`
        assert {k: v for k, v in r.data.params.items() if k != "seeds"} == \
            {k: v for k, v in seeds[0].data.params.items() if k != "seed"}, r.data.params
    for arm in spec.arms:
        trials = optuna.load_study(study_name=f"{spec.name}.{arm.name}.settings", storage=storage).get_trials()
        mine = {r.data.tags["setting_key"]: r for r in settings if r.data.tags["arm"] == arm.name}
        assert sorted(t.user_attrs["setting_key"] for t in trials) == sorted(mine)
        for t in trials:
            run = mine[t.user_attrs["setting_key"]]
            assert t.user_attrs["mlflow_run_id"] == run.info.run_id
            value = run.data.metrics.get(f"final_{metric}", math.nan)
            assert (t.value is None and math.isnan(value)) or t.value == pytest.approx(value, rel=1e-12)


SECRET = "s3cr3t-value-that-must-never-be-recorded"


class Readers:
    """`study ui`, optuna-dashboard and `mlflow.search_runs` reading the stores while a driver creates and writes
    them is normal use: reader threads poll both stores as fast as they can, from before the driver starts."""

    def __init__(self, home: Path, name: str):
        import threading

        self.mlflow_db, self.optuna_db = home / "mlflow.db", home / name / "optuna.db"
        self.stop, self.reads, self.errors = threading.Event(), {"mlflow": 0, "optuna": 0}, []
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._mlflow, self._mlflow, self._optuna)]

    def _loop(self, kind: str, db: Path, read) -> None:
        while not self.stop.is_set():
            if db.exists():  # a reader never creates a store by looking at it
                try:
                    read(f"sqlite:///{db}")
                    self.reads[kind] += 1
                except Exception as e:  # a reader's own trouble (e.g. a busy database): counted, never fatal
                    self.errors.append(f"{kind}: {e!r}"[:200])
            self.stop.wait(0.02)  # about 50 reads a second per thread: a heavy reader, not a busy loop

    def _mlflow(self):
        def read(uri):
            client = MlflowClient(uri)
            exps = [e.experiment_id for e in client.search_experiments()]
            if exps:
                client.search_runs(exps, max_results=50)
        self._loop("mlflow", self.mlflow_db, read)

    def _optuna(self):
        def read(storage):
            for summary in optuna.get_all_study_summaries(storage):
                optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
        self._loop("optuna", self.optuna_db, read)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def test_study_run_records_every_member_once(tmp_path):
    spec = write_spec(tmp_path / "e2e.yaml", "e2e")
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # Ray's own logs, short enough for its socket paths
    with Readers(tmp_path / "home", "e2e") as readers:  # hammering the stores from the first second
        out = run_ok(tmp_path / "home", "run", str(spec),
                     env={"AWS_SECRET_ACCESS_KEY": SECRET, "STUDY_API_TOKEN": SECRET, "MLFLOW_TRACKING_PASSWORD": SECRET,
                          "STUDY_LOG_INTERVAL_S": "0", "RAY_TMPDIR": str(ray_tmp)},
                     unset=("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",))  # the study's own Ray binds 127.0.0.1 by itself
    assert min(readers.reads.values()) > 10, (readers.reads, readers.errors[:5])  # they really read meanwhile
    assert "16/16 members" in out.stdout and "study ui" in out.stdout
    assert "members done" in out.stderr and "best single-seed test_error" in out.stderr  # live progress
    recs = check_records(tmp_path / "home", spec)
    # no credential from the environment is recorded anywhere: params, tags, metrics keys, experiment tags
    client = recs["client"]
    for r in recs["runs"] + [recs["parent"]]:
        blob = repr((r.data.params, r.data.tags, r.data.metrics))
        assert SECRET not in blob
    assert SECRET not in repr(client.get_experiment_by_name("e2e").tags)
    for store in (tmp_path / "home").rglob("*"):  # nor in any byte the study wrote: databases, artifacts
        if store.is_file():
            assert SECRET.encode() not in store.read_bytes(), store
    ray_files = [f for f in ray_tmp.rglob("*") if f.is_file() and not f.is_symlink()]
    assert any("runtime_env" in f.name for f in ray_files) or len(ray_files) > 10, ray_files[:5]  # Ray's logs are here
    raylet = "".join(f.read_text(errors="replace") for f in ray_files if f.name == "raylet.out")
    assert "node_manager address: 127.0.0.1:" in raylet, raylet[:2000]  # no other address of the machine
    for f in ray_files:  # nor in Ray's own logs: trials get an allow-list of the driver's environment
        try:
            assert SECRET.encode() not in f.read_bytes(), f
        except OSError:
            pass  # sockets and files Ray removed meanwhile
    shutil.rmtree(ray_tmp, ignore_errors=True)
    # the export reads those records back: every figure, landscape.json and the report
    exp = run_ok(tmp_path / "home", "export", "e2e", "--out", str(tmp_path / "export"))
    assert "slope of log λ*(η)" in exp.stdout
    for f in ("heatmaps.png", "heatmaps.svg", "ridge.png", "ridge.svg", "collapse.png", "collapse.svg",
              "landscape.json", "report.html", "claims-channels.png"):
        assert (tmp_path / "export" / f).stat().st_size > 1000, f
    assert 'id="claims-channels"' in (tmp_path / "export" / "report.html").read_text()
    # every Adam member records its channels' final norms and mean √v̂ (the figure's points), an SGD member none
    for r in recs["runs"]:
        names = {a.path for a in recs["client"].list_artifacts(r.info.run_id, "diagnostics")}
        if r.data.params["optimizer"] == "adam":
            channels = json.loads(Path(recs["client"].download_artifacts(
                r.info.run_id, "diagnostics/channels.json", str(tmp_path / r.info.run_id))).read_text())
            decayed = int(r.data.tags["decay_counts.decayed_tensors"])
            # the array's resolved device settings: on a CPU, auto means fp32, eager, grouped convolutions
            assert {k: r.data.tags[f"settings.{k}"] for k in ("device", "precision", "compile", "conv", "compile_s")} == \
                {"device": "cpu", "precision": "fp32", "compile": "False", "conv": "grouped", "compile_s": "0.0"}
            assert len(channels["norm"]) == len(channels["sqrt_v"]) == decayed
            assert all(len(n) == len(v) > 0 and min(v) > 0 for n, v in zip(channels["norm"], channels["sqrt_v"]))
        else:
            assert not names, names
    doc = json.loads((tmp_path / "export" / "landscape.json").read_text())
    assert doc["study"] == "e2e" and doc["metric"] == "test_error"
    assert [(a["optimizer"], a["decay"]) for a in doc["arms"]] == [("adam", "independent"), ("sgd", "coupled")]
    for a in doc["arms"]:
        assert {"lr", "weight_decay", "error", "best_weight_decay", "slope", "slope_ci", "best"} <= set(a)
        assert len(a["error"]) == 2 and len(a["error"][0]) == 2 and len(a["best_weight_decay"]) == 2
    client, parent_id = recs["client"], recs["parent"].info.run_id
    official = {f.path for f in client.list_artifacts(parent_id, "landscape/test_error/default")}
    assert {"landscape/test_error/default/report.html", "landscape/test_error/default/landscape.json"} <= official
    parent = client.get_run(parent_id).data
    # the answer on the parent run (a 2 × 2 grid has no interval: NaN metrics are not logged)
    assert {"sgd-coupled.best_lr", "sgd-coupled.best_weight_decay", "sgd-coupled.best_test_error"} <= set(parent.metrics)
    assert parent.tags["verdict.sgd-coupled"]
    # another metric's export goes to its own folder and leaves the official one as it was; --no-log logs nothing
    run_ok(tmp_path / "home", "export", "e2e", "--metric", "test_loss", "--out", str(tmp_path / "export2"))
    assert {f.path for f in client.list_artifacts(parent_id, "landscape/test_loss/default")}
    assert {f.path for f in client.list_artifacts(parent_id, "landscape/test_error/default")} == official
    before = client.list_artifacts(parent_id, "landscape")
    run_ok(tmp_path / "home", "export", "e2e", "--dashboard", "sgd_vs_adam", "--no-log", "--out", str(tmp_path / "export3"))
    assert client.list_artifacts(parent_id, "landscape") == before
    # a second `study run` of the same name refuses instead of duplicating
    again = subprocess.run(study_cmd(tmp_path / "home", "run", str(spec)), capture_output=True, text=True)
    assert again.returncode == 2 and "study resume e2e" in again.stderr
    assert len(recs["runs"]) == 16
    # the Optuna file is lost: resume rebuilds the finished members' trials from MLflow, the records being the
    # source of truth, instead of training and recording them a second time
    (tmp_path / "home" / "e2e" / "optuna.db").unlink()
    resumed = run_ok(tmp_path / "home", "resume", "e2e")
    assert "16/16 members done" in resumed.stderr and "16/16 members recorded" in resumed.stdout
    recs = check_records(tmp_path / "home", spec)
    for r in recs["runs"]:  # final metrics once: nothing was recorded twice
        assert len(client.get_metric_history(r.info.run_id, "final_test_error")) == 1
    trials = optuna.load_study(study_name="e2e.sgd-coupled", storage=f"sqlite:///{tmp_path / 'home' / 'e2e' / 'optuna.db'}").trials
    assert len(trials) == 8 and all(t.user_attrs["rebuilt_from"] == "tracking store" for t in trials)


def test_worker_killed_mid_trial_resumes_from_checkpoint(tmp_path):
    spec = write_spec(tmp_path / "crash.yaml", "crash", small=True, members_per_trial=2)
    raw = yaml.safe_load(spec.read_text())
    raw["tracking"] = {"curve_every": 2}  # learning curves at the last epoch only: check_records holds them to it
    spec.write_text(yaml.safe_dump(raw))
    marker = tmp_path / "crashed-once"
    run_ok(tmp_path / "home", "run", str(spec), env={"STUDY_TEST_CRASH_AT_EPOCH": f"1:{marker}"})
    assert marker.exists()  # one worker process died after epoch 1 and its trial was retried
    recs = check_records(tmp_path / "home", spec)
    resumed = [r for r in recs["runs"] if "resumed_from_epoch" in r.data.tags]
    assert resumed and {r.data.tags["resumed_from_epoch"] for r in resumed} == {"1"}  # from its last checkpoint
    trials = optuna.load_study(study_name="crash.sgd-coupled", storage=f"sqlite:///{tmp_path / 'home' / 'crash' / 'optuna.db'}").trials
    assert {frozenset(t.intermediate_values) for t in trials if t.state.name == "COMPLETE"} == {frozenset({2})}


def _completed_trials(home: Path, name: str) -> int:
    db = home / name / "optuna.db"
    if not db.exists():
        return 0
    storage = f"sqlite:///{db}"
    try:
        return sum(len(optuna.load_study(study_name=s.study_name, storage=storage).get_trials(
            states=(optuna.trial.TrialState.COMPLETE,))) for s in optuna.get_all_study_summaries(storage)
            if not s.study_name.endswith(".settings"))  # members' trials only, not the seed-averaged settings
    except Exception:
        return 0


@pytest.mark.parametrize("spec_file", sorted(p.name for p in (Path(__file__).parents[1] / "search_spaces").glob("*.yaml")))
def test_validate_every_shipped_spec(spec_file, capsys, tmp_path):
    from study.cli import main

    path = Path(__file__).parents[1] / "search_spaces" / spec_file
    argv = ["validate", str(path)]
    if "dataset: digits" not in path.read_text():  # a folder where torchvision's CIFAR archive would be
        (tmp_path / "cifar-10-batches-py").mkdir()
        (tmp_path / "cifar-100-python").mkdir()
        argv += ["--data-path", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "valid" in out and "warning" not in out  # shipped grids are placed by the timescale


SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
SPECS = sorted(p.name for p in (Path(__file__).parents[1] / "search_spaces").glob("*.yaml"))


def test_smoke_quickstart_end_to_end(smoke_study):
    """`study run --smoke` of the main job's spec through Ray, Optuna and MLflow (the session's run, conftest;
    `make smoke` runs every spec)."""
    out = smoke_study.out
    assert "members recorded" in out.stdout and "slope of log" in out.stdout
    # no third-party noise (Ray, Tune, MLflow's table creation, matplotlib's font search): the study's own lines only
    noise = [ln for ln in out.stderr.splitlines()
             if ln.strip() and not ln.startswith(("[study]", "study ", "warning:", "note:"))]
    assert not noise, noise[:10]
    # what it is doing before the first epoch is reported, and where to watch it
    assert "[study] starting a local Ray (127.0.0.1)" in out.stderr and "[study] Ray ready in" in out.stderr
    assert "study ui --home" in out.stderr and "browse it while it runs" in out.stderr


@pytest.mark.parametrize("spec_file", SPECS)
def test_every_shipped_spec_trains_a_step_when_shrunk(spec_file):
    """What `--smoke` trains for each shipped spec (its model, data and arms, shrunk), one epoch of two steps in
    this process: the cheap structural check of every spec; the full smoke runs are `make smoke`."""
    import dataclasses
    import math

    from study.data import load_spec_data
    from study.engine import ArrayConfig, ArrayTrainer
    from study.spec import arm_member, shrink_for_smoke

    path = Path(__file__).parents[1] / "search_spaces" / spec_file
    spec = load_spec(path)
    if spec.data.dataset != "digits":
        if not (SHARED_CIFAR / "train.parquet").is_file():
            pytest.skip(f"needs CIFAR-10 as Parquet at {SHARED_CIFAR}")
        spec = load_spec(path, str(SHARED_CIFAR))
    spec = shrink_for_smoke(spec)
    spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, train_subset=64, test_subset=32),
                               train=dataclasses.replace(spec.train, batch_size=32, device="cpu"))
    for arm in spec.arms:
        members = [arm_member(arm, lr, arm.weight_decay.high, 0) for lr in (arm.lr.low, arm.lr.high)]
        trainer = ArrayTrainer(members, load_spec_data(spec.data), ArrayConfig(spec.model, spec.train, spec.data))
        rows = trainer.train_epoch()
        assert len(rows) == 2 and all(math.isfinite(r["train_loss"]) for r in rows), (arm.name, rows)


def test_diverging_members_are_recorded_as_diverged(tmp_path):
    """Some members of an array diverge (huge lr): recorded as diverged with their last finite metrics, the
    others unaffected, Optuna told the worst error, and the landscape shows them as diverged, not a number."""
    home = tmp_path / "home"
    spec = write_spec(tmp_path / "div.yaml", "div")
    raw = yaml.safe_load(spec.read_text())
    raw["arms"] = [{"optimizer": "sgd", "decay": "coupled", "lr": {"low": 0.05, "high": 1.0e8},
                    "weight_decay": {"low": 0.001, "high": 0.01}}]
    raw["search"]["seeds"] = [0]
    raw["execution"]["members_per_trial"] = 4
    spec.write_text(yaml.safe_dump(raw))
    run_ok(home, "run", str(spec))
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("div")
    runs = client.search_runs([exp.experiment_id], "tags.role = 'member'")
    assert len(runs) == 4
    diverged = [r for r in runs if r.data.tags["diverged"] == "true"]
    healthy = [r for r in runs if r.data.tags["diverged"] == "false"]
    assert {float(r.data.params["lr"]) for r in diverged} == {1.0e8} and len(healthy) == 2
    for r in diverged:
        assert r.data.metrics["final_diverged"] == 1.0 and "final_diverged_epoch" in r.data.metrics
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "test/error")]
        assert sorted(steps) == list(range(1, EPOCHS + 1))  # still one value per epoch
    for r in healthy:
        assert 0 <= r.data.metrics["final_test_error"] < 1 and r.data.metrics["final_diverged"] == 0.0
    trials = optuna.load_study(study_name="div.sgd-coupled", storage=f"sqlite:///{home / 'div' / 'optuna.db'}").trials
    assert sorted(t.value for t in trials if t.user_attrs["diverged"]) == [1.0, 1.0]
    doc = json.loads((home / "div" / "export" / "landscape.json").read_text())
    arm = doc["arms"][0]
    assert arm["error"][1] == [None, None] and arm["diverged"][1] == [1.0, 1.0]  # the lr = 1e8 row


def _image_folder(root: Path, per_class: dict[str, int], size=8, seed=0) -> Path:
    """A torchvision ImageFolder-style folder: root/{train,test}/<class>/<i>.png, each class its own colour."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", {c: max(1, k // 2) for c, k in per_class.items()})):
        for ci, (cls, count) in enumerate(n.items()):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (size, size, 3)) + 60 * ci
                Image.fromarray(pixels.astype("uint8")).save(root / split / cls / f"{i}.png")
    return root


def test_resume_trains_on_the_data_it_started_with(tmp_path):
    """A study started with --data-path (relative to where it was started) is resumed from elsewhere, where the
    same relative path names other data: resume runs the recorded, resolved spec, so every member saw one dataset."""
    started, elsewhere = tmp_path / "started", tmp_path / "elsewhere"
    _image_folder(started / "imgs", {"a": 12, "b": 12})
    _image_folder(elsewhere / "imgs", {"a": 20, "b": 20, "c": 20}, seed=1)  # a decoy under the same relative path
    raw = yaml.safe_load(write_spec(tmp_path / "folder.yaml", "folder", members_per_trial=2, max_concurrent=1).read_text())
    raw["data"] = {"dataset": "imagefolder"}
    raw["arms"] = raw["arms"][:1]
    raw["search"]["seeds"] = [0]
    spec = tmp_path / "folder.yaml"
    spec.write_text(yaml.safe_dump(raw))
    home = tmp_path / "home"
    proc = subprocess.Popen(study_cmd(home, "run", str(spec), "--data-path", "imgs"), cwd=started,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "STUDY_TEST_SLOW_EPOCH_S": "1"})
    deadline = time.time() + 300
    while _completed_trials(home, "folder") < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    if proc.poll() is not None:
        pytest.fail(f"the driver exited with code {proc.returncode} before it could be killed:\n"
                    f"{proc.communicate()[1].decode()[-3000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= _completed_trials(home, "folder") < 4
    out = subprocess.run(study_cmd(home, "resume", "folder"), cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("folder").experiment_id], "tags.role = 'member'")
    check_records(home, spec, data_path=str(started / "imgs"))  # every member once, every epoch once
    assert "/4 members done" in out.stderr
    assert {r.data.params["train_size"] for r in runs} == {"24"}  # the started-with folder, never the decoy's 60
    parent = next(iter(client.search_runs([runs[0].info.experiment_id], "tags.role = 'parent'")))
    recorded = json.loads(Path(client.download_artifacts(parent.info.run_id, "spec.json", str(tmp_path))).read_text())
    assert recorded["data"]["path"] == str((started / "imgs").resolve())


def _count(db: Path, sql: str) -> int:
    """A count read from a SQLite store without writing to it (0 while the store or its table is not there)."""
    import sqlite3
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            return con.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_driver_killed_with_a_backlog_resume_records_every_epoch_once(tmp_path):
    """The writers hold what the driver heard until they write it: MLflow's rows wait for the batch interval
    (an hour here, after the first batch), Optuna's learning curves go at once. The driver is killed (SIGKILL,
    with its Ray) while Optuna holds epochs that MLflow does not: that backlog is lost with the process, and `study resume`
    trains those members again and records every epoch exactly once, in both stores."""
    spec = write_spec(tmp_path / "backlog.yaml", "backlog", small=True, members_per_trial=2, max_concurrent=1)
    raw = yaml.safe_load(spec.read_text())
    raw["train"]["epochs"] = epochs = 3
    spec.write_text(yaml.safe_dump(raw))
    home = tmp_path / "home"
    mlflow_db, optuna_db = home / "mlflow.db", home / "backlog" / "optuna.db"
    epochs_in_mlflow = f"SELECT count(*) FROM metrics WHERE key = '{EPOCH_KEYS['train_loss']}'"
    curves = "SELECT count(*) FROM trial_intermediate_values"
    proc = subprocess.Popen(study_cmd(home, "run", str(spec)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True,
                            env={**os.environ, "STUDY_LOG_INTERVAL_S": "3600", "STUDY_TEST_SLOW_EPOCH_S": "2"})
    deadline = time.time() + 300
    # the first array's epoch 1 is MLflow's first batch, written at once; its epoch 2 then waits for the interval
    while _count(optuna_db, curves) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)  # both members of the first array have reported epoch 2 to the driver
    if proc.poll() is not None or _count(optuna_db, curves) < 4:
        proc.kill()
        pytest.fail(f"no array's epoch reached the driver before it ended (code {proc.poll()}):\n"
                    f"{proc.communicate()[1].decode()[-3000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    heard, written = _count(optuna_db, curves), _count(mlflow_db, epochs_in_mlflow)
    assert written < heard, f"MLflow held all {heard} member-epochs the driver heard: no backlog was lost"
    out = run_ok(home, "resume", "backlog")
    assert "4/4 members done" in out.stderr
    check_records(home, spec)  # every member once, each epoch once per metric, one Optuna trial each
    assert _count(mlflow_db, epochs_in_mlflow) == 4 * epochs


def test_an_unreadable_image_is_refused_before_anything_starts(tmp_path):
    """A file of an image folder that does not decode is found by `validate` and `run` (which decode every image
    once, as the trials will), not by every trial after the records were written."""
    folder = _image_folder(tmp_path / "imgs", {"a": 6, "b": 6})
    (folder / "train" / "b" / "0.png").write_bytes(b"not a png")
    raw = yaml.safe_load(write_spec(tmp_path / "bad.yaml", "badimg", members_per_trial=2).read_text())
    raw["data"] = {"dataset": "imagefolder", "path": str(folder)}
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(raw))
    home = tmp_path / "home"
    env = {**os.environ, "STUDY_CACHE": str(tmp_path / "cache")}
    for cmd in (study_cmd(home, "run", str(spec)), [sys.executable, "-m", "study.cli", "validate", str(spec)]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == 2, out.stderr[-3000:]
        assert "cannot read" in out.stderr and "0.png" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not home.exists() or not any(home.iterdir()), sorted(home.rglob("*"))


def test_a_crop_padding_past_half_an_image_folders_side_is_refused(tmp_path):
    """The padding bound follows the images a folder holds (6×6 here: at most 3), read from a header."""
    folder = _image_folder(tmp_path / "imgs", {"a": 2, "b": 2}, size=6)
    raw = yaml.safe_load(write_spec(tmp_path / "pad.yaml", "pad").read_text())
    env = {**os.environ, "STUDY_CACHE": str(tmp_path / "cache")}
    for padding, code in ((4, 2), (3, 0)):
        raw["data"] = {"dataset": "imagefolder", "path": str(folder), "crop_padding": padding}
        (tmp_path / "pad.yaml").write_text(yaml.safe_dump(raw))
        out = subprocess.run([sys.executable, "-m", "study.cli", "validate", str(tmp_path / "pad.yaml")],
                             capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == code, out.stderr[-3000:]
        if code:
            assert out.stderr.count("\n") == 1 and ("at most half the image side, 3 pixels for imagefolder's 6×6 "
                                                    "images" in out.stderr), out.stderr


def test_failed_members_are_counted_failed_and_resume_retries_them(tmp_path):
    """Members whose arrays fail inside Ray (a fault the trials raise while a file exists) are reported as
    failed with their reason, the run exits non-zero, and `study resume` trains them once the cause is gone."""
    raw = yaml.safe_load(write_spec(tmp_path / "failing.yaml", "failing", members_per_trial=2, max_failures=0).read_text())
    raw["arms"], raw["search"]["seeds"], raw["train"]["epochs"] = raw["arms"][:1], [0], 1
    spec = tmp_path / "failing.yaml"
    spec.write_text(yaml.safe_dump(raw))
    home = tmp_path / "home"
    fault = tmp_path / "fault"
    fault.touch()
    env = {**os.environ, "STUDY_CACHE": str(tmp_path / "cache"), "STUDY_TEST_FAIL_WHILE": str(fault)}
    out = subprocess.run(study_cmd(home, "run", str(spec)), capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "0/4 members recorded, 4 failed" in out.stdout and "test fault" in out.stdout, out.stdout
    assert "study resume failing" in out.stdout
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("failing").experiment_id
    assert {r.info.status for r in client.search_runs([exp], "tags.role = 'member'")} == {"FAILED"}
    assert client.search_runs([exp], "tags.role = 'parent'")[0].info.status == "FAILED"
    fault.unlink()
    out = subprocess.run(study_cmd(home, "resume", "failing"), capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4/4 members recorded" in out.stdout
    runs = client.search_runs([exp], "tags.role = 'member'")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}  # the same runs, now finished
    for r in runs:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "final_test_error")] == [0]


def _parent_exists(home: Path, name: str) -> bool:
    if not (home / "mlflow.db").exists():
        return False
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    return bool(exp and client.search_runs([exp.experiment_id], "tags.role = 'parent'"))


def test_one_driver_per_study(tmp_path):
    """Two `study run` of one spec released together make one parent run; the other is refused with one line.
    While the winner runs, `study resume` is refused too, naming the driver that holds the study. SIGTERM then
    stops the winner cleanly (exit 130, resume advised; a second SIGTERM while it closes its records does not cut
    that short), and `study resume` finishes the study."""
    home = tmp_path / "home"
    spec = write_spec(tmp_path / "lease.yaml", "lease", small=True)
    env = {**os.environ, "STUDY_TEST_SLOW_EPOCH_S": "2"}
    procs = [subprocess.Popen(study_cmd(home, "run", str(spec)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    deadline = time.time() + 120
    while all(p.poll() is None for p in procs) and time.time() < deadline:
        time.sleep(0.2)
    loser = next((p for p in procs if p.poll() is not None), None)
    assert loser is not None, "neither driver was refused within 120 s"
    winner = procs[1 - procs.index(loser)]
    err = loser.stderr.read().strip().splitlines()
    assert loser.returncode == 2 and len(err) == 1, err
    assert "being run by another driver" in err[0] or "already has records" in err[0], err[0]
    try:
        while not _parent_exists(home, "lease"):  # the winner holds the lease and has opened its records
            assert winner.poll() is None and time.time() < deadline, winner.communicate()
            time.sleep(0.2)
        resumed = subprocess.run(study_cmd(home, "resume", "lease"), capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 2 and "being run by another driver (pid" in resumed.stderr, resumed.stderr[-2000:]
        # SIGTERM (a scheduler stopping the job): what finished is recorded, the lease released, resume advised;
        # a second SIGTERM while the driver closes its records (an impatient scheduler, a second Ctrl-C) waits for it
        winner.send_signal(signal.SIGTERM)
        seen = []
        for line in winner.stderr:  # the driver says when it has begun closing its records
            seen.append(line)
            if "[study] interrupted: closing the records" in line:
                winner.send_signal(signal.SIGTERM)
                break
        out, err = winner.communicate(timeout=120)
        err = "".join(seen) + err
        assert "[study] interrupted: closing the records" in err, err[-3000:]  # the second SIGTERM was sent
        assert winner.returncode == 130, err[-3000:]
        assert "interrupted; finish with: study resume lease" in err and "Traceback" not in err, err[-3000:]
    finally:
        if winner.poll() is None:
            winner.kill()
    run_ok(home, "resume", "lease")  # the lease was released: no wait for it to go stale
    check_records(home, spec)  # one parent, every member once


def test_an_interrupt_python_swallows_in_a_finalizer_still_stops_the_driver():
    """A SIGTERM that lands while a finalizer runs: Python swallows the KeyboardInterrupt raised there (seen in
    SQLAlchemy's weakref cleanup; the study then ran to its end and exited 0). The driver remembers it, raises it
    again at its next hook, and no "Exception ignored" traceback is printed."""
    script = textwrap.dedent("""
        import os, signal, sys, types
        from study.driver import STOP, _hook
        STOP.install()
        class Finalized:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGTERM)  # handled here, inside the finalizer
        Finalized()
        print("went on", STOP.interrupted.is_set())
        driver = types.SimpleNamespace(outcome=types.SimpleNamespace(interrupted=False), stop=STOP)
        try:
            _hook(lambda self: "hook ran")(driver)
        except KeyboardInterrupt:
            print("hook raised it")
        driver.outcome.interrupted = True  # handled: the hooks that close the members run again
        print(_hook(lambda self: "hook ran")(types.SimpleNamespace(outcome=driver.outcome, halted=None, stop=STOP,
                                                                   _stores_ok=lambda: True)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[:3] == ["went on True", "hook raised it", "hook ran"], out.stdout + out.stderr
    assert "Exception ignored" not in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_interrupts_while_the_driver_closes_its_records():
    """While the driver closes its records (STOP.closing), the next SIGTERM is remembered and raises nothing, not even
    at the driver's hooks, whatever stopped the study (here an error: the outcome is not marked interrupted); one
    more ends the process at once, exit 130, saying what it leaves undone."""
    script = textwrap.dedent("""
        import os, signal, types
        from study.driver import STOP, _hook
        STOP.install()
        STOP.closing.set()  # as Driver.run does once the study has stopped
        os.kill(os.getpid(), signal.SIGTERM)
        print("remembered", STOP.interrupted.is_set(), flush=True)
        driver = types.SimpleNamespace(outcome=types.SimpleNamespace(interrupted=False), halted=None, stop=STOP,
                                       _stores_ok=lambda: True)
        print(_hook(lambda self: "hook ran")(driver), flush=True)  # the closing goes on
        os.kill(os.getpid(), signal.SIGTERM)
        print("not reached", flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines() == ["remembered True", "hook ran"], out.stdout + out.stderr
    assert out.returncode == 130 and "[study] stopped at once" in out.stderr, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("store", ["optuna", "mlflow"])
def test_store_deleted_mid_run_stops_with_one_line(tmp_path, store):
    """A SQLite store deleted while the study runs: the driver stops with one line naming it, writes nothing
    more (no new, empty store appears in its place), and exits 1. A lost Optuna storage is rebuilt from MLflow by
    `study resume`, which then records every member exactly once."""
    home = tmp_path / "home"
    spec = write_spec(tmp_path / "lost.yaml", "lost", small=True)
    db = home / "lost" / "optuna.db" if store == "optuna" else home / "mlflow.db"
    proc = subprocess.Popen(study_cmd(home, "run", str(spec)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "STUDY_TEST_SLOW_EPOCH_S": "2"})
    try:
        deadline = time.time() + 180
        while not _member_runs(home, "lost"):  # training has started: members are open in MLflow
            if proc.poll() is not None or time.time() >= deadline:  # never wait on a driver that hangs
                proc.kill()
                out, err = proc.communicate(timeout=60)
                pytest.fail(f"no member run within 180 s (exit {proc.returncode}):\n{err[-3000:]}")
            time.sleep(0.2)
        for f in db.parent.glob(db.name + "*"):
            f.unlink()
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    label = "Optuna storage" if store == "optuna" else "MLflow tracking store"
    assert proc.returncode == 1, err[-3000:]
    assert f"[study] stopping: the {label} {db} was deleted or moved during the run" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert not db.exists(), "a new store was created in place of the lost one"
    if store == "optuna":
        assert "`study resume` rebuilds it from MLflow" in err.splitlines()[-1], err[-1000:]
        run_ok(home, "resume", "lost")
        check_records(home, spec)
    else:
        assert "restore it from a backup before resuming" in err.splitlines()[-1], err[-1000:]


def _member_runs(home: Path, name: str) -> int:
    if not (home / "mlflow.db").exists():
        return 0
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    return len(client.search_runs([exp.experiment_id], "tags.role = 'member'")) if exp else 0


def test_a_ray_that_does_not_start_in_time_is_one_line_not_a_hang(tmp_path):
    """ray.init was seen to hang for good in its core worker's registration on an overloaded machine: past
    STUDY_RAY_START_S the driver says so in one line and ends (exit 1) instead of waiting for ever."""
    spec = write_spec(tmp_path / "slowray.yaml", "slowray", small=True)
    out = subprocess.run(study_cmd(tmp_path / "home", "run", str(spec)), capture_output=True, text=True, timeout=300,
                         env={**os.environ, "STUDY_RAY_START_S": "0.5"})
    assert out.returncode == 1, out.stderr[-3000:]
    assert "study: error: Ray did not start within 0.5 s (STUDY_RAY_START_S)" in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and _parent_exists(tmp_path / "home", "slowray")   # the records are kept


def test_resume_records_the_settings_its_stores_lack(tmp_path):
    """A study whose stores lack seed-averaged settings (recorded before they existed, or a driver that died while
    writing one: a run begun and never finished) gets them from `study resume`, as arms with their own optimizer
    settings train them, the begun run completed rather than a second one made."""
    raw = yaml.safe_load(write_spec(tmp_path / "s.yaml", "backfill", members_per_trial=4).read_text())
    raw["arms"] = raw["arms"][:1]
    raw["arms"][0]["momentum"] = 0.5  # not the default: a setting's params must say it
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(raw))
    home = tmp_path / "home"
    run_ok(home, "run", str(spec))
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("backfill").experiment_id
    settings = client.search_runs([exp], "tags.role = 'setting'")
    assert len(settings) == 4 and {r.data.params["momentum"] for r in settings} == {"0.5"}
    for r in settings:
        client.delete_run(r.info.run_id)  # as if recorded before settings existed
    begun = settings[0].data.tags
    crashed = client.create_run(exp, run_name="begun", tags={k: begun[k] for k in (
        "mlflow.parentRunId", "study", "role", "setting_key", "arm", "seeds", "member_runs")}).info.run_id
    storage = f"sqlite:///{home / 'backfill' / 'optuna.db'}"
    optuna.delete_study(study_name="backfill.sgd-coupled.settings", storage=storage)
    out = run_ok(home, "resume", "backfill")
    assert "recorded 4 seed-averaged settings the stores lacked" in out.stderr, out.stderr[-2000:]
    records = check_records(home, spec)  # one setting run per setting, its mean and params those of its members
    after = client.search_runs([exp], "tags.role = 'setting'")
    assert crashed in {r.info.run_id for r in after} and client.get_run(crashed).info.status == "FINISHED"
    assert records["parent"].info.status == "FINISHED"
