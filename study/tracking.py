"""MLflow adapter: one experiment per study, a parent run per study, a child run per member.

Owns every MLflow call. Only the driver writes (one writer; batched calls), so SQLite is safe.
A member's child run is found again by its stable key (tag `member_key`), and a metric step that
is already recorded is never logged again: resume and Ray retries record each member once.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from . import __version__
from .spec import MemberSpec, StudySpec

PER_EPOCH = ("train_loss", "test_loss", "test_error", "weight_norm", "effective_lr", "angular_update", "lr",
             "epoch_time", "wall_time", "diverged")


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def _retry(what: str, fn, *args, attempts: int = 40, **kwargs):
    """Call fn; while the tracking store is unreachable, wait (up to ~10 minutes) and say so."""
    delay = 1.0
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # MlflowException, requests' ConnectionError, sqlite 'database is locked'
            transient = any(w in str(e).lower() for w in ("connection", "refused", "timed out", "temporarily",
                                                          "locked", "max retries", "unavailable", "502", "503"))
            if not transient or i == attempts - 1:
                raise
            print(f"[study] tracking store unreachable while {what} ({type(e).__name__}); "
                  f"retrying in {delay:.0f} s (attempt {i + 1}/{attempts})", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def member_params(spec: StudySpec, member: MemberSpec, train_size: int) -> dict:
    """Everything needed to place a member on the landscape, including the decay timescale τ."""
    steps_per_epoch = max(1, train_size // min(spec.train.batch_size, train_size))
    rate = member.lr * member.weight_decay if member.decay != "independent" else member.weight_decay
    tau = 1.0 / rate if rate > 0 else math.inf
    params = {"optimizer": member.optimizer, "decay": member.decay, "lr": member.lr,
              "weight_decay": member.weight_decay, "seed": member.seed, "model": spec.model.name,
              "width": spec.model.width, "data": spec.data.dataset, "train_size": train_size,
              "epochs": spec.train.epochs, "batch_size": spec.train.batch_size, "schedule": spec.train.schedule,
              "warmup_epochs": spec.train.warmup_epochs, "steps_per_epoch": steps_per_epoch,
              "lr_x_weight_decay": member.lr * member.weight_decay,
              "decay_timescale_steps": tau, "decay_timescale_epochs": tau / steps_per_epoch,
              "total_steps": steps_per_epoch * spec.train.epochs}
    params.update({k: v for k, v in member.optimizer_kwargs().items()})
    return params


class Tracker:
    """The study's MLflow records. `resume=True` finds the parent run again instead of refusing."""

    def __init__(self, uri: str, spec: StudySpec, spec_text: str, resume: bool = False,
                 artifact_location: str | None = None):
        self.uri, self.spec = uri, spec
        self.client = MlflowClient(uri)
        exp = _retry("finding the experiment", self.client.get_experiment_by_name, spec.experiment)
        self.experiment_id = exp.experiment_id if exp else _retry(
            "creating the experiment", self.client.create_experiment, spec.experiment,
            artifact_location=artifact_location,
            tags={"study": spec.name, "mlflow.experimentKind": "custom_model_development"})  # UI: training runs view
        parents = self._search(f"tags.study = '{spec.name}' and tags.role = 'parent'")
        if parents and not resume:
            raise FileExistsError(f"invalid name: study {spec.name!r} already has records in {uri}; "
                                  f"finish it with `study resume {spec.name}` or choose another name")
        if parents:
            self.parent_id = parents[0].info.run_id
            _retry("reopening the parent run", self.client.update_run, self.parent_id, "RUNNING")
        else:
            run = _retry("creating the parent run", self.client.create_run, self.experiment_id,
                         run_name=spec.name, tags={"study": spec.name, "role": "parent", "git_commit": git_commit(),
                                                   "package_version": __version__,
                                                   "mlflow.source.name": "study run"})
            self.parent_id = run.info.run_id
            _retry("logging the spec", self.client.log_text, self.parent_id, spec_text, "spec.yaml")
            _retry("logging study params", self.client.log_batch, self.parent_id, params=[
                Param("study", spec.name), Param("sampler", spec.search.sampler), Param("model", spec.model.name),
                Param("data", spec.data.dataset), Param("epochs", str(spec.train.epochs)),
                Param("arms", ",".join(a.name for a in spec.arms) or "members"),
                Param("seeds", ",".join(map(str, spec.search.seeds))), Param("metric", spec.search.metric)])
        self.logged_steps: dict[str, int] = {}  # run id -> last epoch recorded

    def _search(self, filter_string: str):
        runs, token = [], None
        while True:
            page = _retry("searching runs", self.client.search_runs, [self.experiment_id], filter_string,
                          max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def member_runs(self) -> dict[str, object]:
        """Existing child runs by member key."""
        return {r.data.tags["member_key"]: r for r in self._search(f"tags.study = '{self.spec.name}' and tags.role = 'member'")}

    def open_member(self, member: MemberSpec, arm_trial: int, train_size: int, existing=None) -> str:
        """The member's child run: found by key (and its recorded epochs remembered) or created with its params."""
        key = member.key(self.spec.name)
        if existing is None:
            existing = self._search(f"tags.member_key = '{key}'")
            existing = existing[0] if existing else None
        if existing is not None:
            run_id = existing.info.run_id
            hist = _retry("reading metric history", self.client.get_metric_history, run_id, "train_loss")
            self.logged_steps[run_id] = max((m.step for m in hist), default=0)
            _retry("reopening a member run", self.client.update_run, run_id, "RUNNING")
            return run_id
        name = f"{member.arm} lr={member.lr:.3g} wd={member.weight_decay:.3g} seed={member.seed}"
        run = _retry("creating a member run", self.client.create_run, self.experiment_id, run_name=name,
                     tags={"mlflow.parentRunId": self.parent_id, "study": self.spec.name, "role": "member",
                           "member_key": key, "arm": member.arm, "optuna_trial": str(arm_trial)})
        params = member_params(self.spec, member, train_size)
        _retry("logging member params", self.client.log_batch, run.info.run_id,
               params=[Param(k, str(v)) for k, v in params.items()])
        self.logged_steps[run.info.run_id] = 0
        return run.info.run_id

    def log_epochs(self, run_id: str, rows: list[dict], tags: dict | None = None) -> int:
        """Log epochs' metrics with step = epoch in batched calls, skipping epochs already recorded.
        Returns how many epochs were new."""
        rows = sorted((r for r in rows if int(r["epoch"]) > self.logged_steps.get(run_id, 0)), key=lambda r: r["epoch"])
        if not rows:  # a retried trial re-reporting recorded epochs: only its tags (node, resume) are news
            if tags:
                _retry("tagging a run", self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
            return 0
        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(r[k]), ts, int(r["epoch"])) for r in rows for k in PER_EPOCH if k in r]
        tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics per call
            _retry("logging metrics", self.client.log_batch, run_id, metrics=metrics[i:i + 900],
                   tags=tag_list if i == 0 else [])
        self.logged_steps[run_id] = int(rows[-1]["epoch"])
        return len(rows)

    def log_epoch(self, run_id: str, row: dict, tags: dict | None = None) -> bool:
        """Log one epoch's metrics with step = epoch, unless that epoch is already recorded."""
        return self.log_epochs(run_id, [row], tags) == 1

    def finish_member(self, run_id: str, final: dict | None) -> None:
        if final is None:
            _retry("closing a failed member run", self.client.set_terminated, run_id, "FAILED")
            return
        ts = int(time.time() * 1000)
        metrics = [Metric(f"final_{k}", float(v), ts, 0) for k, v in final.items()
                   if k in PER_EPOCH or k == "diverged_epoch"]
        _retry("logging final metrics", self.client.log_batch, run_id, metrics=metrics,
               tags=[RunTag("diverged", "true" if final.get("diverged") else "false")])
        _retry("closing a member run", self.client.set_terminated, run_id, "FINISHED")

    def finish_study(self, status: str = "FINISHED", summary: dict | None = None) -> None:
        if summary:
            ts = int(time.time() * 1000)
            _retry("logging the summary", self.client.log_batch, self.parent_id,
                   metrics=[Metric(k, float(v), ts, 0) for k, v in summary.items()])
        _retry("closing the parent run", self.client.set_terminated, self.parent_id, status)


def read_study(uri: str, name: str, metric: str | None = None) -> tuple[str, str, str, list[dict]]:
    """(parent run id, spec text, metric, members) of a recorded study; members carry `error` = final
    `metric` (default: the study's search metric)."""
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in _retry("listing experiments", client.search_experiments)]
    runs, token = [], None
    while True:
        page = _retry("reading runs", client.search_runs, exps, f"tags.study = '{name}'", max_results=1000,
                      page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    parents = [r for r in runs if r.data.tags.get("role") == "parent"]
    if not parents:
        raise LookupError(f"invalid name: no study {name!r} is recorded in {uri}")
    parent = parents[0].info.run_id
    metric = metric or parents[0].data.params.get("metric", "test_error")
    spec_text = ""
    try:
        spec_text = Path(mlflow.artifacts.download_artifacts(run_id=parent, artifact_path="spec.yaml",
                                                             tracking_uri=uri)).read_text()
    except Exception:  # a study without its spec artifact still exports
        pass
    members = []
    for r in runs:
        if r.data.tags.get("role") != "member" or r.info.status != "FINISHED":
            continue
        p, m = r.data.params, r.data.metrics
        if f"final_{metric}" not in m:
            raise LookupError(f"invalid --metric: member runs have no final_{metric}; "
                              f"known: {', '.join(k[6:] for k in m if k.startswith('final_'))}")
        members.append({"optimizer": p["optimizer"], "decay": p["decay"], "lr": float(p["lr"]),
                        "weight_decay": float(p["weight_decay"]), "seed": int(p["seed"]),
                        "error": m[f"final_{metric}"], "diverged": r.data.tags.get("diverged") == "true",
                        "run_id": r.info.run_id})
    return parent, spec_text, metric, members


def log_export(uri: str, parent_run_id: str, folder: Path) -> None:
    """The exported figures, landscape.json and report as artifacts of the study's parent run."""
    client = MlflowClient(uri)
    _retry("logging the export", client.log_artifacts, parent_run_id, str(folder), "landscape")
