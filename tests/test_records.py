"""Records a researcher can browse: member runs written the way the driver writes them (Tracker and its
RecordWriter thread, a real MLflow SQLite store), then read in MLflow's terms and read back by the study."""

import math
import os
import time

import mlflow
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from study.spec import EPOCH_METRICS, PRECONDITIONER_METRICS, MemberSpec, final_metrics, spec_from_dict
from study.tracking import (ENDED_AT, EPOCH_KEYS, RecordWriter, Tracker, ensure_store, member_name, read_study,
                            short)

SPEC = {"name": "browse", "arms": [{"optimizer": "sgd", "decay": "coupled", "lr": {"low": 0.01, "high": 0.3},
                                    "weight_decay": {"low": 1e-5, "high": 1e-3}}],
        "train": {"epochs": 3}}
MEMBERS = [MemberSpec("sgd", "coupled", 0.12818610191887028, 3.1622776601683795e-05, seed=1),
           MemberSpec("sgd", "coupled", 0.01, 1e-3, seed=0)]
EPOCHS = 3


def _row(epoch: int, k: int) -> dict:
    """An SGD array's engine row (study/engine.py ArrayTrainer._epoch_rows): every metric of EPOCH_METRICS but
    the ones only an optimizer with a preconditioner has."""
    return {"epoch": epoch, "train_loss": 2.0 / epoch + k, "test_loss": 2.1 / epoch + k,
            "test_error": 0.5 / epoch + 0.01 * k, "weight_norm": 10.0 + epoch, "effective_lr": 0.01 * epoch,
            "angular_update": 0.001 * epoch, "lr": 1e-6 * (EPOCHS - epoch + 1), "epoch_time": 0.5,
            "wall_time": 0.5 * epoch, "diverged": 0.0, "angular_equilibrium": 0.002 * epoch, "head_norm": 3.0 + k}


def _store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_store(uri, (tmp_path / "artifacts").as_uri())
    return uri


def _run_study(uri: str, tmp_path, spec, members=MEMBERS, epochs=EPOCHS, pause=0.3):
    """What study/driver.py does for one array: open the members, report every epoch as it ends (all of them
    reach MLflow in one batch per member, on flush), finish them from their history, finish the study."""
    tracker = Tracker(uri, spec)
    tracker.start((tmp_path / "artifacts").as_uri())
    tracker.set_planned(len(members))
    writer = RecordWriter(tracker, train_size=256)
    keys = [m.key(spec.name) for m in members]
    for number, (key, m) in enumerate(zip(keys, members)):
        writer.open_member(key, m, number)
    received = {}
    for epoch in range(1, epochs + 1):
        time.sleep(pause)  # an epoch takes a while
        received[epoch] = time.time()
        for k, key in enumerate(keys):
            writer.log_epochs([(key, _row(epoch, k))], {"ray_trial_id": "t0"})
    writer.flush()
    for key in keys:
        writer.finish_member(key, final_metrics(writer.history(key, epochs)))
    writer.flush()
    assert writer.epochs_written == epochs * len(members)
    tracker.finish_study("FINISHED", {"members_done": len(members)})
    return tracker, writer, received


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("records")
    uri = _store(tmp_path)
    spec = spec_from_dict(SPEC)
    tracker, writer, received = _run_study(uri, tmp_path, spec)
    client = MlflowClient(uri)
    runs = {r.data.tags["member_key"]: r for r in client.search_runs([tracker.experiment_id], "tags.role = 'member'")}
    return uri, spec, tracker, writer, received, client, runs


def test_epoch_keys_cover_every_metric_once():
    assert set(EPOCH_KEYS) == set(EPOCH_METRICS)
    assert len(set(EPOCH_KEYS.values())) == len(EPOCH_KEYS)
    assert all("/" in v for v in EPOCH_KEYS.values())
    assert EPOCH_KEYS["lr"] == "schedule/lr" and EPOCH_KEYS["train_loss"] == "train/loss"


def test_log10_metrics_and_exact_params(study):
    uri, spec, tracker, writer, received, client, runs = study
    for m in MEMBERS:
        r = runs[m.key(spec.name)]
        assert r.data.metrics["log10_lr"] == pytest.approx(math.log10(m.lr), abs=1e-12)
        assert r.data.metrics["log10_weight_decay"] == pytest.approx(math.log10(m.weight_decay), abs=1e-12)
        assert float(r.data.params["lr_exact"]) == m.lr and float(r.data.params["weight_decay_exact"]) == m.weight_decay
        assert r.data.params["lr"] == short(m.lr) and r.data.params["weight_decay"] == short(m.weight_decay)
    assert runs[MEMBERS[0].key(spec.name)].data.params["lr"] == "0.1282"


def test_params_filter_by_equality_as_displayed(study):
    uri, spec, tracker, writer, received, client, runs = study
    m = MEMBERS[0]
    for flt in (f"params.lr = '{short(m.lr)}'", f"params.weight_decay = '{short(m.weight_decay)}'",
                f"params.lr = '{short(m.lr)}' and params.seed = '1'"):
        found = client.search_runs([tracker.experiment_id], flt)
        assert [r.data.tags["member_key"] for r in found] == [m.key(spec.name)], flt
    mlflow.set_tracking_uri(uri)
    try:
        df = mlflow.search_runs(experiment_ids=[tracker.experiment_id], filter_string=f"params.lr = '{short(m.lr)}'")
    finally:   # unset, not "restored": MLflow's default URI is a relative sqlite:///mlflow.db, which every later
        mlflow.set_tracking_uri(None)      # subprocess of this worker would inherit and write into the checkout
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert list(df["tags.member_key"]) == [m.key(spec.name)]
    # a grouped key filters with backticks (what a test or a notebook waiting for epochs writes)
    found = client.search_runs([tracker.experiment_id], "metrics.`train/loss` > 0")
    assert len(found) == len(MEMBERS)


def test_metric_keys_are_grouped_and_never_a_param(study):
    uri, spec, tracker, writer, received, client, runs = study
    for r in runs.values():
        metrics, params = set(r.data.metrics), set(r.data.params)
        assert not metrics & params, metrics & params
        per_epoch = {k for k in metrics if not k.startswith(("final_", "log10_"))}
        assert per_epoch == {v for k, v in EPOCH_KEYS.items() if k not in PRECONDITIONER_METRICS}  # an SGD array
        assert not set(EPOCH_METRICS) & metrics  # no flat per-epoch key is left
        assert ENDED_AT not in metrics and not any(k.endswith(ENDED_AT) for k in metrics)
        hist = client.get_metric_history(r.info.run_id, "schedule/lr")
        assert sorted(m.step for m in hist) == list(range(1, EPOCHS + 1))
        assert "final_test_error" in metrics and "final_lr" in metrics


def test_epoch_timestamps_are_when_epochs_ended(study):
    uri, spec, tracker, writer, received, client, runs = study
    for r in runs.values():
        for key in ("train/loss", "test/error", "decay/weight_norm"):
            hist = sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.step)
            ts = [m.timestamp for m in hist]
            assert all(a < b for a, b in zip(ts, ts[1:])), (key, ts)
            for m in hist:  # the time the driver heard of the epoch, not the time of the one batched write
                assert abs(m.timestamp - received[m.step] * 1000) < 150, (key, m.step, m.timestamp, received)


def test_trainer_end_times_are_used_and_kept_increasing(tmp_path):
    uri = _store(tmp_path)
    spec = spec_from_dict({**SPEC, "name": "stamped"})
    tracker = Tracker(uri, spec)
    tracker.start((tmp_path / "artifacts").as_uri())
    run_id = tracker.open_member(MEMBERS[0], 0, 256)
    t0 = 1_700_000_000.0
    rows = [{**_row(1, 0), ENDED_AT: t0}, {**_row(2, 0), ENDED_AT: t0 + 12.5}, {**_row(3, 0), ENDED_AT: t0 + 12.5}]
    assert tracker.log_epochs(run_id, rows) == 3  # one batch
    ts = [m.timestamp for m in sorted(tracker.client.get_metric_history(run_id, "test/error"), key=lambda m: m.step)]
    assert ts == [int(t0 * 1000), int((t0 + 12.5) * 1000), int((t0 + 12.5) * 1000) + 1]


def test_parent_has_the_dataset(study):
    uri, spec, tracker, writer, received, client, runs = study
    parent = client.get_run(tracker.parent_id)
    inputs = parent.inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    assert ds.name == spec.data.dataset == "digits" and len(ds.digest) == 16
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"
    assert "digits" in ds.source
    # the same data section gives the same digest; another gives another
    from study.tracking import data_dataset
    assert data_dataset(spec).digest == ds.digest
    other = spec_from_dict({**SPEC, "data": {"dataset": "digits", "train_subset": 100}})
    assert data_dataset(other).digest != ds.digest


def test_run_names_say_arm_lr_wd_seed(study):
    uri, spec, tracker, writer, received, client, runs = study
    for m in MEMBERS:
        name = runs[m.key(spec.name)].info.run_name
        assert name == member_name(m)
        assert m.arm in name and f"lr={short(m.lr)}" in name and f"wd={short(m.weight_decay)}" in name
        assert f"seed={m.seed}" in name
    assert runs[MEMBERS[0].key(spec.name)].info.run_name == "sgd-coupled lr=0.1282 wd=3.162e-05 seed=1"


def test_read_study_and_history_read_back_internal_names(study):
    uri, spec, tracker, writer, received, client, runs = study
    _, _, metric, members = read_study(uri, spec.name)
    assert metric == "test_error"
    got = sorted(members, key=lambda d: d["lr"])
    for d, (k, m) in zip(got, sorted(enumerate(MEMBERS), key=lambda x: x[1].lr)):
        assert (d["optimizer"], d["decay"], d["lr"], d["weight_decay"], d["seed"]) == \
               (m.optimizer, m.decay, m.lr, m.weight_decay, m.seed)  # exact, not the displayed 4 digits
        assert d["error"] == pytest.approx(_row(EPOCHS, k)["test_error"]) and d["diverged"] is False
        assert d["total_steps"] == EPOCHS * 2  # 256 images, batch 128
        hist = tracker.metric_history(d["run_id"])
        assert [r["epoch"] for r in hist] == list(range(1, EPOCHS + 1))
        for r in hist:
            assert set(r) == {"epoch", *EPOCH_METRICS} - set(PRECONDITIONER_METRICS)
            assert r["lr"] == pytest.approx(_row(r["epoch"], k)["lr"])
    resumed = Tracker(uri, spec, resume=True)
    finished = {f.member.key(spec.name) for f in resumed.recorded_members() if f.value is not None}
    assert finished == {m.key(spec.name) for m in MEMBERS}  # exact values: the same stable keys


def test_resume_writes_on_under_the_same_keys(tmp_path):
    uri = _store(tmp_path)
    spec = spec_from_dict({**SPEC, "name": "again"})
    m = MEMBERS[0]
    key = m.key(spec.name)
    tracker = Tracker(uri, spec)
    tracker.start((tmp_path / "artifacts").as_uri())
    w = RecordWriter(tracker, 256)
    w.open_member(key, m, 0)
    for e in (1, 2):
        w.log_epochs([(key, _row(e, 0))], {})
    w.flush()
    again = Tracker(uri, spec, resume=True)  # a new driver: the run is found by key, epoch 2 is re-reported
    again.start()
    w2 = RecordWriter(again, 256)
    w2.open_member(key, m, 0)
    for e in (2, 3):
        time.sleep(0.01)
        w2.log_epochs([(key, _row(e, 0))], {})
    w2.flush()
    assert w2.epochs_written == 1
    assert [r["epoch"] for r in w2.history(key, EPOCHS)] == [1, 2, 3]
    run_id = w2.run_ids[key]
    hist = sorted(again.client.get_metric_history(run_id, "train/loss"), key=lambda x: x.step)
    assert [x.step for x in hist] == [1, 2, 3]
    assert hist[0].timestamp < hist[1].timestamp < hist[2].timestamp


def _legacy_study(uri: str, spec, m: MemberSpec) -> str:
    """A study as the version before grouped keys recorded it: flat metric keys, exact float params."""
    client = MlflowClient(uri)
    exp = client.create_experiment(spec.experiment)
    parent = client.create_run(exp, run_name=spec.name, tags={"study": spec.name, "role": "parent"}).info.run_id
    client.log_batch(parent, params=[Param("metric", "test_error")])
    run = client.create_run(exp, run_name="old", tags={"mlflow.parentRunId": parent, "study": spec.name,
                                                        "role": "member", "member_key": m.key(spec.name)}).info.run_id
    params = {"optimizer": m.optimizer, "decay": m.decay, "lr": m.lr, "weight_decay": m.weight_decay,
              "seed": m.seed, "total_steps": 6}
    ts = int(time.time() * 1000)
    metrics = [Metric(k, float(v), ts, e) for e in (1, 2) for k, v in _row(e, 0).items() if k != "epoch"]
    metrics += [Metric(f"final_{k}", float(v), ts, 0) for k, v in _row(2, 0).items() if k != "epoch"]
    client.log_batch(run, params=[Param(k, str(v)) for k, v in params.items()], metrics=metrics,
                     tags=[RunTag("diverged", "false")])
    client.set_terminated(run, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return run


def test_old_flat_records_still_read(tmp_path):
    uri = _store(tmp_path)
    spec = spec_from_dict({**SPEC, "name": "legacy"})
    m = MEMBERS[0]
    run = _legacy_study(uri, spec, m)
    _, _, metric, members = read_study(uri, spec.name)
    assert [(d["lr"], d["weight_decay"], d["error"]) for d in members] == \
           [(m.lr, m.weight_decay, _row(2, 0)["test_error"])]
    tracker = Tracker(uri, spec, resume=True)
    assert [f.member.key(spec.name) for f in tracker.recorded_members() if f.value is not None] == [m.key(spec.name)]
    assert [r["epoch"] for r in tracker.metric_history(run)] == [1, 2]
    assert tracker.metric_history(run)[1]["lr"] == pytest.approx(_row(2, 0)["lr"])
    # a resumed member begun with flat keys goes on under them, so its charts stay whole
    assert tracker.open_member(m, 0, 256) == run and tracker.logged_steps[run] == 2
    assert tracker.log_epochs(run, [_row(3, 0)]) == 1
    client = MlflowClient(uri)
    assert [x.step for x in client.get_metric_history(run, "train_loss")] == [1, 2, 3]
    assert not client.get_metric_history(run, "train/loss")
    assert client.get_run(run).data.metrics["log10_lr"] == pytest.approx(math.log10(m.lr))


def test_a_member_run_its_driver_left_without_params_is_completed_on_resume(tmp_path):
    """A driver died between creating a member's run and logging its params (two MLflow calls): resume neither
    counts that run as a recorded member nor trips over it, and reopening the member completes its params."""
    uri = _store(tmp_path)
    spec = spec_from_dict({**SPEC, "name": "halfopen"})
    tracker = Tracker(uri, spec)
    tracker.start((tmp_path / "artifacts").as_uri())
    whole = tracker.open_member(MEMBERS[1], 1, 256)
    key = MEMBERS[0].key(spec.name)
    half = tracker.client.create_run(tracker.experiment_id, tags={  # what create_run alone leaves
        "mlflow.parentRunId": tracker.parent_id, "study": spec.name, "role": "member", "member_key": key}).info.run_id
    resumed = Tracker(uri, spec, resume=True)
    assert [f.run_id for f in resumed.recorded_members()] == [whole]
    assert resumed.open_member(MEMBERS[0], 0, 256, resumed.member_runs()[key]) == half  # the same run, not a second
    params = MlflowClient(uri).get_run(half).data.params
    assert float(params["lr_exact"]) == MEMBERS[0].lr and params["optimizer"] == "sgd" and params["seed"] == "1"


def test_parent_records_the_versions_and_resume_warns_when_they_changed(study, tmp_path):
    from study.environment import versions

    uri, spec, tracker, writer, received, client, runs = study
    tags = client.get_run(tracker.parent_id).data.tags
    for name, v in versions().items():
        assert tags[f"env.{name}"] == v                     # python, torch, numpy, scipy, scikit-learn, ray, …
    assert tags["env.driver_cpu"]
    again = Tracker(uri, spec, resume=True)
    again.start((tmp_path / "artifacts").as_uri())
    assert again.version_changes == []                      # the same versions: nothing to say
    client.set_tag(tracker.parent_id, "env.torch", "0.0.1")  # as if the study had started under another torch
    other = Tracker(uri, spec, resume=True)
    other.start((tmp_path / "artifacts").as_uri())
    assert other.version_changes == [f"torch 0.0.1 → {versions()['torch']}"]
    client.set_tag(tracker.parent_id, "env.torch", versions()["torch"])
    client.set_terminated(tracker.parent_id, "FINISHED")


def test_a_name_with_records_is_refused_under_another_experiment_too(study, tmp_path):
    """`--set tracking.experiment=other` must not start a second study of the same name in the same store
    (it added a parent with 0 members, or trained only the new grid points and mixed both in export)."""
    import dataclasses

    uri, spec, tracker, *_ = study
    other = dataclasses.replace(spec, tracking=dataclasses.replace(spec.tracking, experiment="other"))
    with pytest.raises(FileExistsError, match=r"already has records in .*experiment"):
        Tracker(uri, other)
    assert tracker.client.get_experiment_by_name("other") is None   # nothing written
    assert tracker.client.get_run(tracker.parent_id).data.tags["spec_identity"] == spec.identity()
