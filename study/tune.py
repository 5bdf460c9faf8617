"""Ray Tune adapter and the study driver: Optuna asks members, Ray Tune trains arrays, MLflow records.

Owns the one place where Ray is called. The trainable (`train_array`) runs in Ray workers and only
trains and reports; the driver process alone writes to Optuna (StudySearcher) and MLflow
(RecordCallback), so SQLite stores are safe. A Tune trial is one member array: it reports every
epoch with a checkpoint of the array, so a failed trial resumes from its last epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import queue
import sys
import threading
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune
from ray.tune.search import Searcher

from .data import load_spec_data, spec_train_size
from .engine import ArrayConfig, ArrayTrainer, final_metrics, resolve_device
from .search import ArmSearch, open_storage
from .spec import MemberSpec, StudySpec, spec_from_dict
from .tracking import Tracker

CHECKPOINT_FILE = "array.pt"
# per-epoch metrics reach MLflow in one batched call per member at most this many seconds late
LOG_INTERVAL_S = float(os.environ.get("STUDY_LOG_INTERVAL_S", "10"))


# --------------------------------------------------------------------------- the trainable (Ray worker)

def train_array(config: dict) -> None:
    """Train one array of members; report every epoch with a checkpoint; resume from one if Tune gives it."""
    spec = spec_from_dict(config["spec"])
    members = [MemberSpec(**{**m, "betas": tuple(m["betas"])}) for m in config["members"]]
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    device = resolve_device(spec.train.device)
    data = load_spec_data(spec.data)
    trainer = ArrayTrainer(members, data, ArrayConfig(spec.model, spec.train, spec.data), device)
    checkpoint = tune.get_checkpoint()
    resumed_from = None  # a retried trial (its worker or node died) continues from its last epoch
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            trainer.load_state_dict(torch.load(Path(path) / CHECKPOINT_FILE, weights_only=False))
        resumed_from = trainer.epoch
    node = ray.get_runtime_context().get_node_id()
    crash_at = os.environ.get("STUDY_TEST_CRASH_AT_EPOCH")  # fault injection for tests: "epoch:marker-file"
    slow = float(os.environ.get("STUDY_TEST_SLOW_EPOCH_S", "0"))  # tests: time to inject a fault mid-trial

    def report(epoch: int, rows: list[dict]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(trainer.state_dict(), Path(tmp) / CHECKPOINT_FILE)
            tune.report({"epoch": epoch, "rows": json.dumps(rows), "node_id": node,
                         "decay_counts": json.dumps(trainer.decay_counts),
                         "resumed_from_epoch": -1 if resumed_from is None else resumed_from},
                        checkpoint=tune.Checkpoint.from_directory(tmp))
        if slow:
            time.sleep(slow)
        if crash_at:
            at, marker = crash_at.split(":", 1)
            if epoch == int(at) and not Path(marker).exists():
                Path(marker).touch()
                os._exit(1)  # the worker process dies mid-trial, as a preempted node would

    if resumed_from is not None and trainer.epoch >= spec.train.epochs:
        report(trainer.epoch, [h[-1] for h in trainer.history])  # died after its last report: say so once more
    trainer.run(report)


# --------------------------------------------------------------------------- the driver side

class Study:
    """The driver's view of one study: its arms' Optuna studies, its MLflow records and its progress."""

    def __init__(self, spec: StudySpec, spec_text: str, tracking_uri: str, storage: str, resume: bool = False,
                 artifact_location: str | None = None):
        self.spec = spec
        self.tracker = Tracker(tracking_uri, spec, spec_text, resume=resume, artifact_location=artifact_location)
        storage_obj = open_storage(storage)
        self.arms = [ArmSearch(spec, arm, storage_obj) for arm in spec.arms]
        self.train_size = spec_train_size(spec.data)  # headers only: the driver never decodes images
        self.existing_runs = self.tracker.member_runs()
        # work queue: members whose driver died (asked, never told) first, then new asks
        self.pending = {a.arm.name: a.pending() for a in self.arms}
        self.total = sum(a.total for a in self.arms)
        self.done = sum(a.finished() for a in self.arms)
        self.started = time.time()
        self.done_at_start = self.done
        self.best: dict[str, float] = {}
        self.epochs_total = self.total * spec.train.epochs     # member-epochs: progress inside long arrays
        self.epochs_done = self.done * spec.train.epochs
        self.epochs_at_start = self.epochs_done
        self._last_print = 0.0
        self.trials: dict[str, list[tuple[ArmSearch, int, MemberSpec, str]]] = {}
        self.run_ids: dict[str, str] = {}                      # member key -> MLflow run id
        self.histories: dict[str, dict[int, dict]] = {}        # member key -> epoch -> reported row
        self._next_arm = 0
        self.metric = spec.search.metric
        # per-epoch logging runs in one writer thread so Ray Tune's event loop (and the trials waiting
        # on it) never waits for the store; close_trial drains it before reading the records back
        self._log_queue: queue.Queue = queue.Queue()
        self._writer_error: list[BaseException] = []
        self._rows: dict[str, tuple[list[dict], dict]] = {}   # written by the writer thread only
        self._rows_written = 0.0
        threading.Thread(target=self._writer, name="mlflow-writer", daemon=True).start()
        _LIVE[id(self)] = self

    def __reduce__(self):
        """Tune pickles (and copies) its searcher and callbacks; both must keep driving this one live Study,
        whose state lives in its stores and whose connections and writer thread cannot be pickled."""
        return _live_study, (id(self),)

    def _writer(self) -> None:
        """Runs the MLflow calls queued by _submit, one at a time, in order. Epoch rows are gathered per
        member and written as one batched call per member every LOG_INTERVAL_S seconds (and on flush)."""
        while True:
            try:
                fn, args = self._log_queue.get(timeout=1.0)
            except queue.Empty:
                self._guarded(self._write_rows, False)
                continue
            try:
                self._guarded(fn, *args)
                self._guarded(self._write_rows, False)
            finally:
                self._log_queue.task_done()

    def _guarded(self, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as e:  # surfaced by flush(): a lost record must stop the study
            self._writer_error.append(e)

    def _submit(self, fn, *args) -> None:
        self._log_queue.put((fn, args))

    def flush(self) -> None:
        """Wait until everything reported so far is recorded in MLflow."""
        self._submit(self._write_rows, True)
        self._log_queue.join()
        if self._writer_error:
            raise RuntimeError(f"recording to MLflow failed: {self._writer_error[0]!r}") from self._writer_error[0]

    def _open_member(self, key: str, member: MemberSpec, number: int) -> None:
        run_id = self.tracker.open_member(member, number, self.train_size, self.existing_runs.get(key))
        self.run_ids[key] = run_id

    def _log_epoch(self, key: str, row: dict, tags: dict) -> None:
        self._rows.setdefault(key, ([], {}))[0].append(row)
        self._rows[key][1].update(tags)

    def _write_rows(self, force: bool) -> None:
        if not self._rows or (not force and time.time() - self._rows_written < LOG_INTERVAL_S):
            return
        rows, self._rows = self._rows, {}
        self._rows_written = time.time()
        for key, (member_rows, tags) in rows.items():
            self.epochs_done += self.tracker.log_epochs(self.run_ids[key], member_rows, tags)

    def next_array(self, size: int):
        """Up to `size` members of one arm, round-robin over arms; None when nothing is left to ask."""
        for i in range(len(self.arms)):
            arm = self.arms[(self._next_arm + i) % len(self.arms)]
            queue = self.pending[arm.arm.name]
            batch = [queue.pop(0) for _ in range(min(size, len(queue)))]
            if not batch:
                batch = arm.ask(size)
            if batch:
                self._next_arm = (self._next_arm + i + 1) % len(self.arms)
                return arm, batch
        return None

    def open_trial(self, trial_id: str, arm: ArmSearch, batch) -> list[MemberSpec]:
        """Register an array's members; their MLflow runs are created by the writer, so the trial starts now."""
        entries = []
        for number, member in batch:
            key = member.key(self.spec.name)
            self._submit(self._open_member, key, member, number)
            entries.append((arm, number, member, key))
        self.trials[trial_id] = entries
        return [m for _, _, m, _ in entries]

    def record_epoch(self, trial_id: str, result: dict) -> None:
        rows = json.loads(result["rows"])
        tags = {"ray_node_id": result.get("node_id", ""), "ray_trial_id": trial_id}
        if result.get("resumed_from_epoch", -1) >= 0:
            tags["resumed_from_epoch"] = result["resumed_from_epoch"]
        counts = json.loads(result.get("decay_counts", "{}"))
        tags.update({f"decay_counts.{k}": v for k, v in counts.items()})
        for (_, _, _, key), row in zip(self.trials[trial_id], rows):
            self.histories.setdefault(key, {})[int(row["epoch"])] = row  # a retry may report an epoch again
            self._submit(self._log_epoch, key, row, tags)
        if time.time() - self._last_print > 10:
            self.print_progress()

    def _history(self, key: str) -> list[dict]:
        """The member's epochs as reported to this driver; epochs recorded by an earlier driver (resume)
        are read back from MLflow."""
        seen = self.histories.pop(key, {})
        if len(seen) < self.spec.train.epochs:
            for row in _history_from_run(self.tracker, self.run_ids[key]):
                seen.setdefault(int(row["epoch"]), row)
        return [seen[e] for e in sorted(seen)]

    def close_trial(self, trial_id: str, failed: bool) -> None:
        self.flush()
        entries = self.trials.pop(trial_id, [])
        for arm, number, member, key in entries:
            run_id = self.run_ids[key]
            history = self._history(key)
            if failed or len(history) < self.spec.train.epochs:
                arm.tell(number, None)
                self._submit(self.tracker.finish_member, run_id, None)
                continue
            final = final_metrics(history)
            diverged = bool(final.get("diverged"))
            err = final.get(self.metric, math.nan)
            arm.tell(number, err, diverged=diverged)
            self._submit(self.tracker.finish_member, run_id, final)
            if not diverged and math.isfinite(err):
                self.best[member.arm] = min(self.best.get(member.arm, math.inf), err)
        self.done += len(entries)
        self.print_progress()

    def print_progress(self) -> None:
        self._last_print = time.time()
        elapsed = time.time() - self.started
        new = self.epochs_done - self.epochs_at_start
        left = self.epochs_total - self.epochs_done
        eta = _fmt(elapsed / new * left) if new and left > 0 else ("0:00" if left <= 0 else "?")
        best = ", ".join(f"{a} {e:.3f}" for a, e in sorted(self.best.items())) or "-"
        print(f"[study] {self.done}/{self.total} members done ({self.epochs_done}/{self.epochs_total} member-epochs)"
              f" | elapsed {_fmt(elapsed)} | ETA {eta} | best {self.metric}: {best}", file=sys.stderr, flush=True)


_LIVE: dict[int, Study] = {}


def _live_study(key: int) -> Study:
    if key not in _LIVE:
        raise RuntimeError("a pickled Study can only be restored in the driver process that created it")
    return _LIVE[key]


def _history_from_run(tracker: Tracker, run_id: str) -> list[dict]:
    """Per-epoch rows of a member, read back from MLflow (the records are the source of truth)."""
    from .tracking import PER_EPOCH

    by_step: dict[int, dict] = {}
    for key in PER_EPOCH:
        for m in tracker.client.get_metric_history(run_id, key):
            by_step.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [by_step[s] for s in sorted(by_step)]


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class StudySearcher(Searcher):
    """Tune's search algorithm: each suggestion is one array of members asked from an arm's Optuna study."""

    def __init__(self, study: Study, spec_dict: dict, threads: int):
        super().__init__(metric="epoch", mode="max")
        self.study, self.spec_dict, self.threads = study, spec_dict, threads
        self.size = study.spec.execution.members_per_trial

    def suggest(self, trial_id: str):
        nxt = self.study.next_array(self.size)
        if nxt is None:
            return Searcher.FINISHED
        arm, batch = nxt
        members = self.study.open_trial(trial_id, arm, batch)
        return {"spec": self.spec_dict, "arm": arm.arm.name, "threads": self.threads,
                "members": [dataclasses.asdict(m) for m in members]}

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self.study.close_trial(trial_id, failed=error)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: Optuna's storage and MLflow are the searcher's state (see `study resume`)."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore; see save()."""


class RecordCallback(tune.Callback):
    """Logs every reported epoch of every member to MLflow, in the driver."""

    def __init__(self, study: Study):
        self.study = study

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.study.record_epoch(trial.trial_id, result)


def arrays_needed(study: Study) -> int:
    k = study.spec.execution.members_per_trial
    return sum(math.ceil((a.total - a.finished()) / k) + len(study.pending[a.arm.name]) for a in study.arms) + len(study.arms)


def _trial_name(trial) -> str:
    return f"{trial.config.get('arm', 'array')}-{trial.trial_id}"


def run_study(study: Study, storage_path: Path, address: str | None = None) -> dict:
    """Train every member the study still lacks through Ray Tune; return a summary."""
    spec = study.spec
    x = spec.execution
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # no result files: by design
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # a local Ray for this study only, on 127.0.0.1, without the dashboard
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            ray.init(include_dashboard=False, log_to_driver=False)
    cpus = x.cpus_per_trial
    gpus = x.gpus_per_trial if torch.cuda.is_available() or address else 0.0
    trainable = tune.with_resources(train_array, {"cpu": cpus, "gpu": gpus})
    searcher = StudySearcher(study, spec.to_dict(), threads=max(1, int(cpus)))
    study.print_progress()
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=arrays_needed(study),
                                    max_concurrent_trials=x.max_concurrent,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=str(storage_path), callbacks=[RecordCallback(study)], verbose=0,
            failure_config=tune.FailureConfig(max_failures=x.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    tuner.fit()
    study.flush()
    return {"members": study.total, "done": study.done, "best": dict(study.best)}
