"""The study driver: one study from a resolved spec to its records, composing three parts.

    search    (search.py, Optuna)   which members to train next, and what each scored
    trainers  (tune.py, Ray Tune)   arrays of members trained on the cluster, reporting every epoch
    records   (tracking.py, MLflow) member runs, per-epoch metrics, final metrics

plus a progress reporter. Each store has one writer thread (serial.py) that runs its calls in order, so Tune's
event loop never waits for a store: MLflow's writes the records, Optuna's the learning curves and the tells
(after the member's final records are in MLflow). Every store is checked before anything is written; only this process
writes to the stores. The CLI parses, builds a Driver, calls `run()`, and prints the Outcome.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .datasets import split_sizes
from .progress import Progress
from .search import StudySearch, check_optuna_url, precheck_identity
from .serial import SerialWriter
from .settings import SettingBook
from .spec import MemberSpec, SpecError, StudySpec, arm_member, final_metrics, shown, timescale_warnings
from .stores import StoreWatch, default_storage, default_tracking_uri
from .tracking import RecordWriter, Tracker, ensure_store, stop_retrying


@dataclass(frozen=True)
class Stores:
    """Where a study's records live. Every path is absolute: Ray runs trials in their own folders."""
    home: Path
    tracking: str     # MLflow tracking URI
    storage: str      # Optuna storage URL (or journal file)

    @classmethod
    def default(cls, home: Path, name: str, tracking: str | None = None, storage: str | None = None) -> "Stores":
        return cls(home, tracking or default_tracking_uri(home), storage or default_storage(home, name))

    def artifacts(self) -> str | None:
        """Artifact root of a SQLite tracking store (a server keeps its own)."""
        return (self.home / "artifacts").as_uri() if self.tracking.startswith("sqlite") else None


@dataclass
class Outcome:
    total: int
    done: int
    failed: dict[str, str] = field(default_factory=dict)  # member key -> reason
    best: dict[str, float] = field(default_factory=dict)  # arm -> best single member
    best_setting: dict[str, tuple] = field(default_factory=dict)  # arm -> (mean over seeds, lr, wd, seeds)
    seconds: float = 0.0
    interrupted: bool = False
    error: str | None = None  # why the study stopped early (the stores, Ray), one line

    @property
    def complete(self) -> bool:
        return self.done >= self.total


class StopState:
    """What a SIGTERM or Ctrl-C has asked of the driver, shared by the signal handler and the driver's threads.

    `interrupted`: one has come. `closing`: the driver is closing its records, so a further interrupt is only
    remembered; a third ends the process at once. Python swallows an exception raised while a finalizer runs
    (seen: a SIGTERM that landed in SQLAlchemy's weakref cleanup, after which the study ran on to its end and
    exited 0), so the driver's hooks raise it again at their next call (`unhandled`), and so does the start of the
    run. One per process (signals are), `STOP`; `install()` starts it afresh (a process may drive several
    studies, as the tests do)."""

    def __init__(self):
        self.interrupted = threading.Event()
        self.closing = threading.Event()
        self._while_closing = 0

    def handle(self, signum=None, frame=None) -> None:
        """The handler for SIGTERM and SIGINT: a KeyboardInterrupt where the main thread is, as Ctrl-C gives,
        remembered too; while closing, the next raises nothing (it would cut the closing short) and one more ends
        the process (a store that does not answer can hold the closing for minutes)."""
        self.interrupted.set()
        if not self.closing.is_set():
            raise KeyboardInterrupt
        self._while_closing += 1
        if self._while_closing >= 2:
            os.write(2, b"\n[study] stopped at once: the members in flight are not closed; `study resume` trains them "
                        b"again (once this driver's lease is stale, 60 s)\n")
            os._exit(130)

    def install(self) -> None:
        """SIGTERM and SIGINT end a driver cleanly wherever they land; the one a finalizer swallowed is not
        reported as an ignored exception, since the driver raises it again."""
        self.interrupted.clear()
        self.done_closing()
        signal.signal(signal.SIGTERM, self.handle)
        signal.signal(signal.SIGINT, self.handle)

        def unraisable(u):
            if not (isinstance(u.exc_value, KeyboardInterrupt) and self.interrupted.is_set()):
                sys.__unraisablehook__(u)
        sys.unraisablehook = unraisable

    def unhandled(self, handled: bool) -> bool:
        """An interrupt came that the driver has not handled (`handled`: its outcome says interrupted) and it is
        not closing: raise it again."""
        return self.interrupted.is_set() and not handled and not self.closing.is_set()

    def done_closing(self) -> None:
        """The records are closed: what the caller does next (the export) stops at the next Ctrl-C again."""
        self.closing.clear()
        self._while_closing = 0


STOP = StopState()


def _hook(method):
    """A hook that Tune calls. Once the driver has halted it does nothing; before it writes, the stores are
    checked; an error inside it halts the driver. (Raised into Tune, an error is only logged with its
    traceback and the array retried, writing into whatever the stores have become.)"""
    @functools.wraps(method)
    def hook(self, *args, **kwargs):
        if self.stop.unhandled(self.outcome.interrupted):
            raise KeyboardInterrupt  # an interrupt Python swallowed: see StopState
        if self.halted is not None or not self._stores_ok():
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            lost = self.watch.lost()
            self._halt(lost[1] if lost else _one_line(e), lost[0] if lost else None)
            return None
    return hook


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


class Driver:
    """The driver of one study (see the module docstring). Construct, then `run()`."""

    def __init__(self, spec: StudySpec, stores: Stores, resume: bool = False, address: str | None = None, out=None,
                 stop: StopState = STOP):
        self.spec, self.stores, self.address, self.stop = spec, stores, address, stop
        self.out = out or sys.stderr
        if spec.members:
            raise SpecError("invalid members: `study run` searches arms; train explicit members with `study train`, "
                            f"but got {len(spec.members)} members")
        self.train_size, _ = split_sizes(spec.data)  # headers only (an image folder is decoded once, into the cache)
        # every store checked (scheme, reachable, writable) before the first record is written anywhere
        check_optuna_url(stores.storage)
        precheck_identity(stores.storage, spec, resume)  # another spec's trials, or a study's finished members
        # a new run would count and never record: refused before anything is written
        ensure_store(stores.tracking, stores.artifacts())
        self.tracker = Tracker(stores.tracking, spec, resume)  # refuses a name that has records, unless resuming
        (stores.home / spec.name).mkdir(parents=True, exist_ok=True)
        self.book = SettingBook(spec.search.seeds)  # seed-averaged settings, recorded as their last seed finishes
        self.search = StudySearch(spec, stores.storage, finished=self._recorded if resume else None)
        try:
            default = default_storage(stores.home, spec.name)
            self.tracker.start(stores.artifacts(), None if stores.storage == default else stores.storage)
            self.tracker.set_planned(self.search.total)
            self.writer = RecordWriter(self.tracker, self.train_size)
            self.optuna = SerialWriter("optuna-writer")  # learning curves and tells, off Tune's event loop
            self.watch = StoreWatch({"Optuna storage": stores.storage, "MLflow tracking store": stores.tracking})
        except BaseException:
            self.search.lease.release()  # nothing started: the study is free again
            raise
        done = self.search.done()
        self.progress = Progress(self.search.total, done, spec.train.epochs, spec.search.metric, out=self.out)
        self.outcome = Outcome(self.search.total, done)
        self.trials: dict[str, tuple[object, list[tuple[int, MemberSpec, str]]]] = {}
        self.halted: str | None = None     # why the driver stopped writing, one line (tune.py then stops Tune)
        self.lost: str | None = None       # the store that vanished, if that was why
        self.tune = None                   # study.tune, once Ray is loaded
        self.curves_recorded = 0           # member-epochs Optuna's writer has handled (a point each, at curve_every)
        for w in timescale_warnings(spec, self.train_size):  # said once the study is ours to run
            print(f"warning: {w}", file=self.out)
        if self.tracker.version_changes:
            print(f"warning: resuming under other versions than the study started with "
                  f"({', '.join(self.tracker.version_changes)}): its members may not be comparable", file=self.out)
        self.env_tagged = self.tracker.device_recorded   # the first trial's device, tagged on the parent once

    def _recorded(self):
        """The members MLflow holds (a resumed study), read once the lease is this driver's: the search is rebuilt
        from them, and the settings book learns the finished ones."""
        recorded = self.tracker.recorded_members()
        arms = {a.name: a for a in self.spec.arms}
        for f in recorded:  # as the arm trains it (momentum, betas …: the records' params name only lr and λ)
            if f.value is not None and f.member.arm in arms:
                m = f.member
                self.book.add(arm_member(arms[m.arm], m.lr, m.weight_decay, m.seed), f.final, f.diverged, f.run_id)
        return recorded

    def record_settings(self) -> int:
        """Every complete setting either store lacks (a study recorded before settings existed, or a driver that
        died between a setting's last member and its records), written now; the number written."""
        complete = self.book.complete()
        if not complete:
            return 0
        in_mlflow, arms, n = self.tracker.setting_runs(), {a.arm.name: a for a in self.search.arms}, 0
        for setting in complete:
            key = setting.key(self.spec.name)
            run_id, finished = in_mlflow.get(key, (None, False))
            wrote = not finished
            if not finished:
                run_id = self.tracker.record_setting(setting, self.train_size, unfinished=run_id)
            arm = arms.get(setting.arm)
            if arm is not None and not arm.setting_recorded(key):
                self._tell_setting(arm, setting, run_id)
                wrote = True
            n += wrote
        return n

    # ------------------------------------------------------------------ hooks called by tune.py

    def _stores_ok(self) -> bool:
        lost = self.watch.lost()
        if lost:
            self._halt(lost[1], lost[0])
        elif self.search.lease.taken_by:  # two drivers must never write one study: the other one goes on
            self._halt(f"another driver ({self.search.lease.taken_by}) took this study over while this one stalled; "
                       f"it goes on, this one writes nothing more", "lease")
        else:
            for store, writer in (("MLflow", self.writer), ("Optuna", self.optuna)):
                if (e := writer.failed()) is not None:
                    self._halt(f"recording to {store} failed: {_one_line(e)}")
                    break
        return self.halted is None

    def _halt(self, why: str, lost: str | None = None) -> None:
        """Stop the study: no more writes (none at all to a lost store); Tune stops its trials."""
        if self.halted is None:
            self.halted, self.lost = why, lost
            if lost in ("MLflow tracking store", "lease"):  # nothing more is written there: no more retries either
                stop_retrying()
            if lost == "Optuna storage":
                self.search.lease.abandon()  # its heartbeat would write into a new, empty file
            self.progress.message(f"[study] stopping: {why}")

    @_hook
    def suggest(self, trial_id: str) -> dict | None:
        nxt = self.search.next_array(self.spec.execution.members_per_trial)
        if nxt is None:
            return None
        arm, batch = nxt
        entries = []
        for number, member in batch:
            key = member.key(self.spec.name)
            self.writer.open_member(key, member, number)
            entries.append((number, member, key))
        self.trials[trial_id] = (arm, entries)
        # a trial gets what it trains: the data, model and train sections and its members
        trial_spec = {k: v for k, v in self.spec.to_dict().items() if k in ("name", "data", "model", "train")}
        return {"arm": arm.arm.name, "threads": max(1, int(self.spec.execution.cpus_per_trial)),
                "spec": {**trial_spec, "members": [m.to_dict() for _, m, _ in entries]}}

    @_hook
    def on_epoch(self, trial_id: str, result: dict) -> None:
        rows = json.loads(result["rows"])
        tags = {"ray_node_id": result.get("node_id", ""), "ray_trial_id": trial_id}
        if result.get("resumed_from_epoch", -1) >= 0:
            tags["resumed_from_epoch"] = result["resumed_from_epoch"]
        tags.update({f"decay_counts.{k}": v for k, v in json.loads(result.get("decay_counts", "{}")).items()})
        tags.update({f"settings.{k}": v for k, v in json.loads(result.get("settings", "{}")).items()})
        env = {f"env.{k}": v for k, v in json.loads(result.get("environment", "{}")).items()}
        tags.update(env)
        if env and not self.env_tagged:  # the versions and device the numbers came from, on the study's run
            self.writer.call(self.tracker.tag_parent, env)
            self.env_tagged = True
        arm, entries = self.trials[trial_id]
        metric = self.spec.search.metric
        self.writer.log_epochs([(key, row) for (_, _, key), row in zip(entries, rows)], tags)
        every, last = self.spec.tracking.curve_every, self.spec.train.epochs  # the cadence of the curves, and the end
        self.optuna.call(self._report_curves, arm, [(number, int(row["epoch"]), float(row.get(metric, math.nan)))
                                                    for (number, _, _), row in zip(entries, rows)
                                                    if int(row["epoch"]) % every == 0 or int(row["epoch"]) == last],
                         len(rows))
        self.progress.epochs(len(rows), seconds=max((float(r.get("epoch_time", 0.0)) for r in rows), default=None),
                             key=trial_id, epoch=int(rows[0]["epoch"]) if rows else None,
                             label=f"{arm.arm.name}, {len(entries)} members")

    @_hook
    def on_retry(self, trial_id: str) -> None:
        self.progress.retry(trial_id)

    @_hook
    def on_trial_end(self, trial_id: str, error: str | None, interrupted: bool = False) -> None:
        """An array finished (error None) or failed for good. Its closing is queued, not done here: Tune's loop
        goes on at once. On MLflow's writer its members' final records are written (_close_trial), then Optuna's
        writer tells Optuna (_tell_trial): a member counts as done only once its records are in MLflow. A crash in
        between leaves members finished in MLflow, from which `study resume` rebuilds Optuna; the other order
        could leave a member done in Optuna with no final record."""
        if trial_id not in self.trials:
            return
        arm, entries = self.trials.pop(trial_id)  # closing: an interrupt from here on never closes it again
        self.progress.array_done(trial_id)
        self.writer.call(self._close_trial, arm, entries, error, interrupted)

    # ------------------------------------------------------------------ on the writers' threads

    def _report_curves(self, arm, curves: list[tuple[int, int, float]], handled: int) -> None:
        """Optuna's learning curves (intermediate values): a point per member at each tracking.curve_every-th
        epoch and the last; `handled` member-epochs are then done on Optuna's side."""
        if self.lost in ("Optuna storage", "lease"):
            return
        for number, epoch, value in curves:
            arm.report(number, epoch, value)
        self.curves_recorded += handled

    def _close_trial(self, arm, entries, error: str | None, interrupted: bool) -> None:
        """MLflow's writer: the array's members' final records (every epoch row queued before is written first)."""
        if self.lost in ("MLflow tracking store", "lease"):
            return
        self.writer.write_now()
        epochs, outcomes, settings = self.spec.train.epochs, [], []
        for number, member, key in entries:
            history = self.writer.history(key, epochs)
            if error is not None or len(history) < epochs:
                reason = error or (f"interrupted after {len(history)} of {epochs} epochs" if interrupted
                                   else f"only {len(history)} of {epochs} epochs were reported")
                self.writer.finish_now(key, None)
                outcomes.append((number, member, key, None, False, reason))
            else:
                final = final_metrics(history)
                self.writer.finish_now(key, final)
                outcomes.append((number, member, key, final.get(self.spec.search.metric, math.nan),
                                 bool(final.get("diverged")), None))
                done = self.book.add(member, final, bool(final.get("diverged")), self.writer.run_ids.get(key))
                if done is not None:  # its last seed: the seed mean recorded, after every seed's own record
                    settings.append((done, self.tracker.record_setting(done, self.train_size)))
        self.optuna.call(self._tell_trial, arm, outcomes, settings)

    def _tell_trial(self, arm, outcomes, settings=()) -> None:
        """Optuna's writer: each member's final metric (or its failure), once its records are in MLflow; then the
        settings these members completed, as trials of the arm's settings study."""
        if self.lost in ("Optuna storage", "lease"):
            return
        for number, member, key, value, diverged, reason in outcomes:
            attrs = {"mlflow_run_id": self.writer.run_ids.get(key)}
            if reason is not None:
                arm.tell(number, None, attrs=attrs, reason=reason)
                self.outcome.failed[key] = reason
                self.progress.member_done(member.arm, None)
            else:
                arm.tell(number, value, diverged=diverged, attrs=attrs)
                self.outcome.failed.pop(key, None)
                self.outcome.done += 1
                self.progress.member_done(member.arm, value, diverged=diverged)
        for setting, run_id in settings:
            self._tell_setting(arm, setting, run_id)
        self.progress.print()

    def _tell_setting(self, arm, setting, run_id: str) -> None:
        metric = self.spec.search.metric
        seeds = sorted(setting.seeds)
        std = setting.std(metric)
        self.progress.setting_done(setting.arm, setting.mean(metric), setting.lr, setting.weight_decay, setting.averaged)
        arm.record_setting(setting.key(self.spec.name), setting.lr, setting.weight_decay, setting.mean(metric),
                           {"seeds": seeds, "seeds_diverged": setting.diverged, "mlflow_run_id": run_id,
                            "member_runs": [setting.seeds[s].run_id for s in seeds],
                            **({f"{metric}_std": std} if math.isfinite(std) else {})})

    def drain(self) -> None:
        """Wait until both writers have recorded everything queued: MLflow's first (its closings queue the tells)."""
        self.writer.flush()
        self.optuna.flush()

    # ------------------------------------------------------------------ the run

    def refine(self) -> int:
        """search.refine: where an arm's best λ lies beyond the grid's edge in some rows, add the weight decay
        columns that complete those rows (new members under the same arm, seeds and arrays); 0 when none."""
        from .landscape import landscapes, refine_columns
        from .tracking import read_study

        self.drain()
        _, _, metric, members = read_study(self.stores.tracking, self.spec.name, self.spec.search.metric)
        added = 0
        for land in landscapes(members, metric=metric):
            arm = next((a for a in self.search.arms if a.arm.name == land.arm), None)
            new = refine_columns(land)  # never a λ whose per-step decay factor would turn negative
            if arm is None or not new:
                continue
            n = arm.extend(new)
            added += n
            self.progress.message(f"[study] refine {land.arm}: best λ at the grid's edge in "
                                  f"{sum(c is not None for c in land.censored)} of {len(land.lr)} rows; adding weight_decay "
                                  f"{', '.join(shown(w) for w in new)} ({n} members)")
        self.outcome.total = self.progress.total = self.search.total
        self.progress.epochs_total = self.search.total * self.spec.train.epochs
        return added

    def arrays_needed(self) -> int:
        """An upper bound on the Tune trials the remaining members need (arrays per arm, rounded up, plus one
        per arm for seed groups that straddle arrays)."""
        k = self.spec.execution.members_per_trial
        return sum(math.ceil(max(0, a.total - a.done()) / k) + 1 for a in self.search.arms)

    def run(self) -> Outcome:
        """Train the study's rounds (_train_rounds), then close its records (_close): whatever stopped it, an
        interrupt (Ctrl-C, SIGTERM) or an error, ends in the summary; what was recorded stays."""
        t0 = time.time()
        try:
            try:  # from here on an interrupt at any point ends in the summary and exit 130
                self._train_rounds()
            except KeyboardInterrupt:
                self.stop.closing.set()  # first: a second Ctrl-C or SIGTERM does not cut the closing short
                self.outcome.interrupted = True  # the hooks that close the members now run as they should
            except Exception as e:  # the study stops; the summary says why
                self.stop.closing.set()
                self.outcome.error = _one_line(e)
            self.stop.closing.set()
            return self._close(t0)
        finally:  # the driver's threads and Ray stop here, in order, not in the interpreter's exit
            self.stop.closing.set()
            try:
                self.writer.close()  # the queued records land while the lease is still this driver's
                self.optuna.close()
                self.search.lease.release()  # a no-op once abandoned
                if self.tune is not None:  # Ray was loaded: leave it (a local Ray stops)
                    self.tune.stop_ray()
            finally:
                if self.stop.interrupted.is_set():  # one that came while the records were closed counts too
                    self.outcome.interrupted = True
                self.stop.done_closing()

    def _start_ray(self) -> float:
        """Start (or join) Ray and say how long it took; the GPU share each array asks for (0 where the cluster
        has no GPU and no autoscaler to bring one)."""
        x, tune = self.spec.execution, self.tune
        t_ray = time.time()
        self.progress.message(f"[study] joining the Ray cluster at {self.address}" if self.address
                              else "[study] starting a local Ray (127.0.0.1) for this study")
        tune.start_ray(self.address)
        self.progress.message(f"[study] Ray ready in {time.time() - t_ray:.0f} s; the first epoch "
                              f"of each array is being trained (data loading included)")
        gpus = x.gpus_per_trial
        if gpus and not tune.cluster_gpus():
            if tune.autoscaler_running():   # workers at zero: the trials' demand brings GPU nodes
                self.progress.message(f"[study] the Ray cluster has no GPU yet and runs an autoscaler: arrays wait "
                                      f"for its GPU workers (Ray warns if no node type offers {gpus:g} GPU)")
            else:
                self.progress.message(f"warning: execution.gpus_per_trial={gpus} but the Ray cluster has no GPU "
                                      f"and no autoscaler: training on CPUs")
                gpus = 0.0
        return gpus

    def _train_rounds(self) -> None:
        """The study's arrays on Ray, round after round: the grid (or the sampler's trials), then each refine
        round the rows' edges ask for, until the study is complete or stopped."""
        x = self.spec.execution
        if self.stop.interrupted.is_set():
            raise KeyboardInterrupt  # one that came while the records opened, and Python swallowed
        self.progress.print()
        self.progress.tick()
        if n := self.record_settings():  # a resumed study: settings its records complete and its stores lack
            self.progress.message(f"[study] recorded {n} seed-averaged settings the stores lacked (whole or in part)")
        for s in self.book.complete():  # the progress ranks the study's settings, those of earlier runs too
            self.progress.setting_done(s.arm, s.mean(self.spec.search.metric), s.lr, s.weight_decay, s.averaged)
        if self.address is None:  # a Ray of the study's own binds 127.0.0.1 only; Ray reads this as it loads
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        from . import tune  # Ray loads only here, once every input is known good
        self.tune = tune
        rounds, gpus = self.tracker.refine_rounds(), None
        while True:
            if any(a.has_work() for a in self.search.arms):  # a resumed, finished study starts no Ray
                if gpus is None:
                    gpus = self._start_ray()
                name = self.spec.name if not rounds else f"{self.spec.name}-refine{rounds}"
                tune.run_arrays(self, name, self.stores.home / self.spec.name / "ray", self.arrays_needed(),
                                x.cpus_per_trial, gpus, x.max_concurrent, x.max_failures)
                self.drain()  # the arrays Tune ended are closed in both stores before anything is counted
            if self.trials or not self.outcome.complete or rounds >= self.spec.search.refine or not self.refine():
                return
            rounds += 1
            self.tracker.set_planned(self.search.total, rounds)

    def _close(self, t0: float) -> Outcome:
        """Close the records of a study that stopped, for whatever reason: the members in flight (as interrupted,
        or in MLflow alone when Optuna cannot be told), the writers flushed, the parent run's status and summary."""
        if self.outcome.interrupted:
            self.progress.message("[study] interrupted: closing the records of the members in flight "
                                  "(a second Ctrl-C waits for that; a third stops at once)")
        if self.halted is None:
            self._stores_ok()
        halted_before_cleanup = self.halted is not None
        mlflow_ok = self.lost not in ("MLflow tracking store", "lease")  # a study taken over is the other's to write
        try:
            if not halted_before_cleanup:
                for trial_id in list(self.trials):  # arrays Tune ended without a result (interrupted, lost)
                    self.on_trial_end(trial_id, None, interrupted=True)
            elif mlflow_ok:  # Optuna cannot be told: the members in flight are closed in MLflow alone
                for _, entries in self.trials.values():
                    for _, _, key in entries:
                        self.writer.finish_member(key, None)
            if mlflow_ok:
                self.writer.flush()
            if self.lost not in ("Optuna storage", "lease"):
                self.optuna.flush()
        except Exception as e:
            self.outcome.error = self.outcome.error or _one_line(e)
        if self.halted is not None:
            self.outcome.error = self.halted + (
                "; restore it from a backup before resuming" if self.lost == "MLflow tracking store" else
                "; `study resume` rebuilds it from MLflow" if self.lost == "Optuna storage" else "")
        self.outcome.seconds = time.time() - t0
        self.progress.close()
        self.outcome.best = dict(self.progress.best)
        self.outcome.best_setting = dict(self.progress.best_setting)
        status = "FINISHED" if self.outcome.complete else ("KILLED" if self.outcome.interrupted else "FAILED")
        try:
            if mlflow_ok:
                self.tracker.finish_study(status, {"members_done": self.outcome.done,
                                                   "members_failed": len(self.outcome.failed),
                                                   "minutes": self.outcome.seconds / 60})
        except Exception as e:
            self.outcome.error = self.outcome.error or _one_line(e)
        return self.outcome
