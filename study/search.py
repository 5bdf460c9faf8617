"""Optuna adapter: one Optuna study per arm, and the study-level search that asks them in turn.

Owns samplers and storage, through Optuna's public ask/tell API only. A member is one setting
(lr, weight_decay) and one seed; an Optuna trial is one attempt at a member: params lr and
weight_decay (log scale, what the sampler searches and the dashboards plot), user attribute `seed`
(a repetition, never searched). Grids are enqueued whole at the start, one trial per point and
seed; other samplers sample a setting and enqueue it again for every other seed.
A member is done when one of its trials is COMPLETE. A trial that was asked but never told (its
driver died) is closed as FAIL and its member enqueued again; so is a member whose trial failed,
when the study is resumed. Only the driver uses this module (one writer), so a SQLite file is safe.
"""

from __future__ import annotations

import collections
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from .spec import ArmSpec, MemberSpec, SpecError, StudySpec, arm_member, arm_settings, grid_axis
from .stores import StoreError, check_optuna_url, create_sqlite_atomically, masked, sqlite_path

optuna.logging.set_verbosity(optuna.logging.WARNING)

MemberId = tuple  # (lr, weight_decay, seed)


def open_storage(url: str):
    """Optuna storage for a SQLAlchemy URL, or a path ending in .log/.journal (journal file storage);
    checked (scheme, reachable, writable) first. A SQLite file is created whole before anyone can open it."""
    check_optuna_url(url)
    if "://" not in url:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    create_sqlite_atomically(url, lambda tmp_url: optuna.storages.RDBStorage(tmp_url).engine.dispose())
    return optuna.storages.RDBStorage(url, heartbeat_interval=None, engine_kwargs={"pool_pre_ping": True})


def _sampler(spec: StudySpec, seed: int = 0):
    """The sampler of a non-grid arm. Grids need none: every point is enqueued with fixed params. `seed`: 0 for a
    new study (the same draws every time); a resumed one passes how many trials it holds, or its sampler would
    draw the settings it already trained again (its random start is the seed's sequence, from the beginning)."""
    s = spec.search
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.sampler == "qmc":  # a Sobol sequence: it goes on from the trials the study holds, whatever the seed
        return optuna.samplers.QMCSampler(seed=0, scramble=True, warn_independent_sampling=False)
    if s.sampler == "tpe":
        # explicit, whatever the Optuna version's defaults: batches of asks see each other (constant liar)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if s.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # grid: never consulted


@dataclass(frozen=True)
class Finished:
    """A member as the tracking store records it (used to rebuild a lost Optuna storage, and the seed-averaged
    settings of a resumed study); value None: the member was started but did not finish. `final`: its final
    metrics by name (test_error, …), empty for one that did not finish."""
    member: MemberSpec
    value: float | None
    diverged: bool
    run_id: str
    final: dict = field(default_factory=dict, compare=False)


class ArmSearch:
    """The Optuna study of one arm. `total` members: (grid points or trials) × seeds."""

    def __init__(self, spec: StudySpec, arm: ArmSpec, storage, finished: Iterable[Finished] = ()):
        self.spec, self.arm = spec, arm
        self.study = optuna.create_study(study_name=f"{spec.name}.{arm.name}", storage=storage,
                                         sampler=_sampler(spec), direction="minimize", load_if_exists=True)
        if held := len(self.study.get_trials(deepcopy=False)):  # resumed: draws that go on, not start again
            self.study.sampler = _sampler(spec, seed=held)
        if not self.study.user_attrs:
            with warnings.catch_warnings():  # "set_metric_names is experimental": the dashboards read it
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names([spec.search.metric])
            for k, v in (("arm", arm.name), ("metric", spec.search.metric), ("seeds", list(spec.search.seeds)),
                         ("spec_identity", spec.identity())):
                self.study.set_user_attr(k, v)
        self.seeds = list(spec.search.seeds)
        self.refined: list[float] = list(self.study.user_attrs.get("refined_weight_decay", []))  # search.refine
        self.total = (arm_settings(arm, spec.search) + self._lr_points() * len(self.refined)) * len(self.seeds)
        wds = [arm.weight_decay.low, arm.weight_decay.high, *self.refined]
        self.distributions = {"lr": FloatDistribution(arm.lr.low, arm.lr.high, log=True),
                              "weight_decay": FloatDistribution(min(wds), max(wds), log=True)}
        # trials this driver asked and has not told: number -> the Trial Optuna's ask gave, or the trial id of one
        # created with its params (a pending member; see ask)
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(self.study.study_name)
        self._live: dict[int, optuna.Trial | int] = {}
        self._pending: collections.deque[MemberId] = collections.deque()  # (lr, wd, seed) not yet asked
        self._waiting = 0                     # trials in Optuna's queue (an earlier driver's), asked first
        self._sampled: set[tuple[float, float]] = set()  # settings a sampler has drawn (not grids)
        self._lock = threading.Lock()         # ask (the Tune loop) and report/tell (the Optuna writer)
        self._reported: dict[int, set[int]] = {}  # trial number -> epochs reported
        self._settings_study: optuna.Study | None = None  # NAME.ARM.settings, made by _settings()
        self._settings_keys: set[str] = set()
        self._reconcile(list(finished))

    # ------------------------------------------------------------------ state

    @staticmethod
    def _id(t) -> MemberId | None:
        """(lr, weight_decay, seed) of a trial. A WAITING (enqueued) trial has no params yet: the driver enqueues
        its setting in user attributes too (public API). Trials queued by versions before that hold it only in
        Optuna's own record of the fixed params, read as the last resort so that none is queued twice."""
        params = t.params or ({k: t.user_attrs[k] for k in ("lr", "weight_decay")} if "lr" in t.user_attrs
                              else t.system_attrs.get("fixed_params", {}))
        if not {"lr", "weight_decay"} <= set(params) or "seed" not in t.user_attrs:
            return None
        return (float(params["lr"]), float(params["weight_decay"]), int(t.user_attrs["seed"]))

    def _trials(self, *states):
        return self.study.get_trials(deepcopy=False, states=states or None)

    def done_ids(self) -> set[MemberId]:
        return {i for t in self._trials(TrialState.COMPLETE) if (i := self._id(t))}

    def done(self) -> int:
        return len(self.done_ids())

    def _reconcile(self, finished: list[Finished]) -> None:
        """Make the Optuna study agree with what is recorded, before anything is asked:
        1. trials asked but never told (their driver died) are closed as FAIL: their members go again;
        2. members the tracking store holds as finished but Optuna does not (a lost or restored storage)
           are added as COMPLETE trials from those records, so they are never trained twice (members it holds
           as started tell which columns a refine round added);
        3. every member not done and not queued is enqueued (grids: all points and refined columns;
           samplers: the settings sampled so far)."""
        for t in self._trials(TrialState.RUNNING):
            self.study.tell(t.number, state=TrialState.FAIL)
        done = self.done_ids()
        if self.spec.search.sampler == "grid":  # columns a refine round added, known to the records only
            grid = set(grid_axis(self.arm.weight_decay, self.spec.search.points))
            extra = sorted({f.member.weight_decay for f in finished} - grid - set(self.refined))
            if extra:
                self.refined += extra
                self.study.set_user_attr("refined_weight_decay", self.refined)
                wds = [self.distributions["weight_decay"].low, self.distributions["weight_decay"].high, *extra]
                self.distributions["weight_decay"] = FloatDistribution(min(wds), max(wds), log=True)
                self.total += self._lr_points() * len(extra) * len(self.seeds)
        for f in finished:
            m = f.member
            if f.value is None or (m.lr, m.weight_decay, m.seed) in done:
                continue
            value = 1.0 if f.diverged or not math.isfinite(f.value) else float(f.value)
            self.study.add_trial(optuna.trial.create_trial(
                params={"lr": m.lr, "weight_decay": m.weight_decay}, distributions=self.distributions, value=value,
                user_attrs={"seed": m.seed, "diverged": f.diverged, "mlflow_run_id": f.run_id,
                            "rebuilt_from": "tracking store"}))
            done.add((m.lr, m.weight_decay, m.seed))
        self._enqueue_missing(done)

    def _enqueue_missing(self, done: set) -> None:
        """Every member neither done nor waiting in Optuna's queue (trials a driver of an earlier version
        enqueued) becomes pending: enqueued one at a time as it is asked (ask). Optuna's ask reads the whole
        queue of waiting trials, so a grid enqueued up front made each ask cost O(members) and opening a
        study of thousands of members take minutes (bench/control_plane.py)."""
        waiting = [i for t in self._trials(TrialState.WAITING) if (i := self._id(t))]
        self._waiting = len(waiting)
        queued = set(waiting) | set(self._pending)
        if self.spec.search.sampler == "grid":
            settings = [(lr, wd) for lr in grid_axis(self.arm.lr, self.spec.search.points)
                        for wd in [*grid_axis(self.arm.weight_decay, self.spec.search.points), *self.refined]]
        else:
            settings = list(dict.fromkeys((i[0], i[1]) for t in self._trials() if (i := self._id(t))))
            self._sampled = set(settings)
        for lr, wd in settings:
            for seed in self.seeds:
                if (lr, wd, seed) not in done and (lr, wd, seed) not in queued:
                    self._pending.append((lr, wd, seed))

    def _lr_points(self) -> int:
        return len(grid_axis(self.arm.lr, self.spec.search.points))

    def extend(self, weight_decays: list[float]) -> int:
        """search.refine: add weight_decay columns (beyond the grid's edge) for every lr row and seed, as new
        members; nothing recorded is re-run. Returns how many members were added."""
        new = [float(w) for w in weight_decays if w not in self.refined]
        if not new:
            return 0
        self.refined += new
        self.study.set_user_attr("refined_weight_decay", self.refined)
        lo, hi = self.distributions["weight_decay"].low, self.distributions["weight_decay"].high
        self.distributions["weight_decay"] = FloatDistribution(min(lo, *new), max(hi, *new), log=True)
        added = self._lr_points() * len(new) * len(self.seeds)
        self.total += added
        self._enqueue_missing(self.done_ids())
        return added

    def _can_sample(self) -> bool:
        return self.spec.search.sampler != "grid" and len(self._sampled) < self.arm_settings()

    def arm_settings(self) -> int:
        return arm_settings(self.arm, self.spec.search)

    def has_work(self) -> bool:
        return bool(self._waiting or self._pending) or self._can_sample()

    # ------------------------------------------------------------------ ask / tell

    def _suggest(self, trial: optuna.Trial) -> MemberSpec:
        lr = trial.suggest_float("lr", self.arm.lr.low, self.arm.lr.high, log=True)
        w = self.distributions["weight_decay"]  # the spec's range, widened by refinement
        wd = trial.suggest_float("weight_decay", w.low, w.high, log=True)
        if "seed" not in trial.user_attrs:  # a new sample: its first seed here, the others pending
            trial.set_user_attr("seed", self.seeds[0])
            self._sampled.add((lr, wd))
            self._pending.extend((lr, wd, seed) for seed in self.seeds[1:])
        return arm_member(self.arm, lr, wd, trial.user_attrs["seed"])

    def ask(self, n: int) -> list[tuple[int, MemberSpec]]:
        """Up to n members: waiting and pending ones first (their seeds stay together), then new samples.
        A member whose setting is known (a grid point, another seed of a sampled setting) is created as a
        running trial with its params (the storage API), not asked: Optuna's ask reads every unfinished
        trial of the study each time, so asking one array of a study with thousands of members in flight took
        minutes (bench/control_plane.py). Model-based samplers see the earlier asks as running (constant liar)."""
        out = []
        with self._lock:
            while len(out) < n and self.has_work():
                if not self._waiting and self._pending:
                    lr, wd, seed = self._pending.popleft()
                    frozen = optuna.trial.create_trial(
                        state=TrialState.RUNNING, params={"lr": lr, "weight_decay": wd},
                        distributions=self.distributions, user_attrs={"seed": seed, "lr": lr, "weight_decay": wd})
                    trial_id = self.storage.create_new_trial(self.study_id, template_trial=frozen)
                    number = self.storage.get_trial_number_from_id(trial_id)
                    self._live[number] = trial_id
                    out.append((number, arm_member(self.arm, lr, wd, seed)))
                    continue
                self._waiting = max(0, self._waiting - 1)  # Optuna's ask pops the oldest waiting trial first
                trial = self.study.ask()
                member = self._suggest(trial)
                self._live[trial.number] = trial
                out.append((trial.number, member))
        return out

    def report(self, number: int, epoch: int, value: float) -> None:
        """A member's metric after `epoch`: Optuna's intermediate values, the dashboards' learning curves. An
        epoch reported again (an array resumed from its checkpoint) keeps its first value."""
        with self._lock:
            trial, seen = self._live.get(number), self._reported.setdefault(number, set())
            if trial is None or not math.isfinite(value) or epoch in seen:
                return
            seen.add(epoch)
        if isinstance(trial, int):
            self.storage.set_trial_intermediate_value(trial, int(epoch), float(value))
        else:
            trial.report(float(value), step=int(epoch))

    def tell(self, number: int, error: float | None, diverged: bool = False, attrs: dict | None = None,
             reason: str = "") -> None:
        """The member's final metric; None marks the attempt failed (with its reason). A diverged member is
        told 1.0, the worst error. Each trial is told once."""
        with self._lock:
            trial = self._live.pop(number, None)
            self._reported.pop(number, None)
        if trial is None:
            return  # not asked by this driver: nothing to tell
        attrs = {**(attrs or {}), **({"fail_reason": reason[:500]} if error is None else {"diverged": bool(diverged)})}
        for k, v in attrs.items():
            if isinstance(trial, int):
                self.storage.set_trial_user_attr(trial, k, v)
            else:
                trial.set_user_attr(k, v)
        if error is None:
            self.study.tell(number, state=TrialState.FAIL)
        else:
            self.study.tell(number, 1.0 if diverged or not math.isfinite(error) else float(error))


    # ------------------------------------------------------------------ seed-averaged settings

    def _settings(self) -> optuna.Study:
        """The arm's second study, NAME.ARM.settings: one trial per setting whose seeds have all finished, its
        value their mean (study/settings.py), so that its best trial is the study's best cell. Made on first use."""
        if self._settings_study is None:
            study = optuna.create_study(study_name=f"{self.study.study_name}.settings", storage=self.storage,
                                        direction="minimize", load_if_exists=True)
            if not study.user_attrs:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names([f"{self.spec.search.metric} (mean over seeds)"])
                for k, v in (("arm", self.arm.name), ("metric", self.spec.search.metric), ("seeds", self.seeds),
                             ("spec_identity", self.spec.identity()),
                             ("holds", f"one trial per setting: the mean over seeds of the members of study "
                                       f"{self.study.study_name}, diverged seeds left out")):
                    study.set_user_attr(k, v)
            self._settings_keys = {t.user_attrs.get("setting_key") for t in study.get_trials(deepcopy=False)}
            self._settings_study = study
        return self._settings_study

    def setting_recorded(self, key: str) -> bool:
        self._settings()
        return key in self._settings_keys

    def record_setting(self, key: str, lr: float, weight_decay: float, value: float, attrs: dict) -> bool:
        """The setting as a finished trial of the settings study (FAIL, with no value, when every seed diverged:
        the landscape has no value for that cell either); once per key. Returns whether it was added."""
        study = self._settings()
        if key in self._settings_keys:
            return False
        dist = {"lr": FloatDistribution(min(lr, self.distributions["lr"].low), max(lr, self.distributions["lr"].high),
                                        log=True),
                "weight_decay": FloatDistribution(min(weight_decay, self.distributions["weight_decay"].low),
                                                  max(weight_decay, self.distributions["weight_decay"].high), log=True)}
        ok = math.isfinite(value)
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "weight_decay": weight_decay}, distributions=dist,
            value=value if ok else None, state=TrialState.COMPLETE if ok else TrialState.FAIL,
            user_attrs={**attrs, "setting_key": key}))
        self._settings_keys.add(key)
        return True


def holder_alive(attrs: dict, stale_s: float) -> bool:
    """Whether the driver named by a lease's attributes is alive: its heartbeat is fresher than `stale_s`, and on
    this host its process still exists."""
    if attrs.get("host") == socket.gethostname() and "pid" in attrs:
        try:
            os.kill(int(attrs["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    return time.time() - float(attrs.get("heartbeat", 0.0)) < stale_s


class Lease:
    """One driver per study, across machines: the lease is an Optuna study named `NAME.driver` in the study's
    own storage (creating a study is atomic: its name is unique), whose user attributes name the holder
    and carry a heartbeat. Another driver is refused while the heartbeat is fresh (or the holder's process
    is alive on this host) and takes over a stale lease."""

    STALE_S = 60.0   # no heartbeat for this long: the holder is gone
    BEAT_S = 10.0

    def __init__(self, storage, study: str):
        self.storage, self.name = storage, f"{study}.driver"
        self.holder = f"pid {os.getpid()} on {socket.gethostname()}"
        self._stop = threading.Event()
        self._abandoned = False
        self.taken_by: str | None = None  # set by the heartbeat when another driver holds the lease now
        for attempt in range(3):
            try:
                self.study = optuna.create_study(study_name=self.name, storage=storage)
                break
            except optuna.exceptions.DuplicatedStudyError:
                found = self._stamped(storage)
                if found is None:  # released meanwhile: try again
                    continue
                study_id, a = found
                if attempt == 2 or self._alive(a):
                    age = time.time() - float(a.get("heartbeat", 0.0))
                    raise StoreError(f"invalid name: study {study!r} is being run by another driver "
                                     f"({a.get('holder', 'unknown')}, heartbeat {age:.0f} s ago); wait for it, or stop it "
                                     f"(a lease is taken over {self.STALE_S:.0f} s after its driver stops)") from None
                self._take_over(storage, study_id, a)  # stale; the next attempt creates ours, or meets another's
        else:
            raise StoreError(f"invalid name: study {study!r} is being started by other drivers at this moment; "
                             f"try again") from None
        # the lease's own id, by the public API, read at once after creating it (an unstamped lease is taken over
        # only when its creator is presumed dead); release() deletes by this id, never a later lease of the name
        self.study_id = storage.get_study_id_from_name(self.name)
        self.study.set_user_attr("holder", self.holder)
        self.study.set_user_attr("host", socket.gethostname())
        self.study.set_user_attr("pid", os.getpid())
        self.study.set_user_attr("heartbeat", time.time())
        self.heartbeat = threading.Thread(target=self._beat, name="study-lease", daemon=True)
        self.heartbeat.start()

    def _stamped(self, storage) -> tuple[int, dict] | None:
        """The id and attributes of a lease another driver holds, once it has stamped them (holder, host, pid,
        then the heartbeat: creating the lease and stamping it are two steps, and a loaded machine may stretch the
        gap). A lease still unstamped after STALE_S is returned as it is (its creator died): stale. None if the
        lease is gone."""
        deadline = time.time() + self.STALE_S
        while True:
            try:
                study_id = storage.get_study_id_from_name(self.name)
                attrs = storage.get_study_user_attrs(study_id)
            except KeyError:
                return None
            if "heartbeat" in attrs or time.time() > deadline:
                return study_id, attrs
            time.sleep(0.1)

    @staticmethod
    def _take_over(storage, study_id: int, stale: dict) -> None:
        """Delete the stale lease this driver read: by its id, and only while it still carries the attributes
        read. Two drivers that find one stale lease both come here; the slower one must not delete the lease the
        faster one has created meanwhile under the same name (SQLite may even give it the same id). What is left
        open is the moment between this read and the delete."""
        try:
            if storage.get_study_user_attrs(study_id) == stale:
                storage.delete_study(study_id)
        except KeyError:
            pass  # gone: another driver took it over first, and the next attempt meets its lease

    def _alive(self, attrs: dict) -> bool:
        """A holder is alive while its heartbeat is fresh (holder_alive); this very process as the holder (a
        restarted container reusing the PID) is stale at once."""
        if attrs.get("host") == socket.gethostname() and int(attrs.get("pid", -1)) == os.getpid():
            return False
        return holder_alive(attrs, self.STALE_S)

    def _beat(self) -> None:
        while not self._stop.wait(self.BEAT_S):
            try:
                holder = optuna.load_study(study_name=self.name, storage=self.storage).user_attrs.get("holder")
                if holder != self.holder:  # this driver stalled past STALE_S and another took the study over
                    self.taken_by = holder or "another driver"
                    return
                self.study.set_user_attr("heartbeat", time.time())
            except Exception as e:  # the storage is gone or unreachable: say so, the driver's own calls will stop it
                print(f"[study] cannot renew the driver lease ({type(e).__name__})", file=sys.stderr, flush=True)

    def abandon(self) -> None:
        """Stop the heartbeat and never write again (the storage was lost); release() is then a no-op."""
        self._abandoned = True
        self._stop.set()

    def release(self) -> None:
        """Give the lease back, if it is still ours (a driver that stalled past STALE_S may have lost it)."""
        self._stop.set()
        self.heartbeat.join(self.BEAT_S)  # a renewal in flight ends before the lease goes
        if self._abandoned:
            return
        try:  # this driver's own lease, by its id: never one another driver created under the name meanwhile
            if self.storage.get_study_user_attrs(self.study_id).get("holder") == self.holder:
                self.storage.delete_study(self.study_id)
        except Exception:  # already gone: nothing to release
            pass


def _arm_studies(storage, spec: StudySpec):
    """(arm, Optuna study id) of each of the spec's arms whose study the storage holds."""
    for arm in spec.arms:
        try:
            yield arm, storage.get_study_id_from_name(f"{spec.name}.{arm.name}")
        except KeyError:
            continue


def check_identity(storage, spec: StudySpec) -> None:
    """Refuse, before anything is written, an arm's Optuna study that another spec created under this name:
    its queued and finished trials would be trained and counted under this spec."""
    for arm, study_id in _arm_studies(storage, spec):
        name = f"{spec.name}.{arm.name}"
        recorded = storage.get_study_user_attrs(study_id).get("spec_identity")
        if recorded is not None and recorded != spec.identity():
            raise SpecError(f"invalid name: the Optuna study {name!r} was made by another spec (identity {recorded}, "
                            f"this spec {spec.identity()}): its trials would be trained under this one; choose "
                            f"another name, or resume that study with `study resume {spec.name}`")


class StudySearch:
    """The study's search: the arms' Optuna studies, asked round-robin for arrays of one arm each."""

    def __init__(self, spec: StudySpec, storage_url: str, finished: Callable[[], Iterable[Finished]] | None = None):
        """`finished`: reads the members the records hold (resume), called once this driver holds the lease, so
        that no other driver is writing them meanwhile."""
        self.spec = spec
        try:
            storage = open_storage(storage_url)
        except StoreError:
            raise
        except Exception as e:  # a server that answers but refuses the login, a foreign database …
            shown = masked(storage_url)
            raise StoreError(f"invalid --storage: cannot open the Optuna storage {shown} "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        self.lease = Lease(storage, spec.name)  # before anything is written: a second driver is refused here
        by_arm: dict[str, list[Finished]] = {}
        try:
            recorded = list(finished()) if finished else []
        except BaseException:
            self.lease.release()
            raise
        for f in recorded:
            by_arm.setdefault(f.member.arm, []).append(f)
        try:
            check_identity(storage, spec)
            self.arms = [ArmSearch(spec, arm, storage, by_arm.get(arm.name, ())) for arm in spec.arms]
        except SpecError:
            self.lease.release()
            raise
        except (optuna.exceptions.StorageInternalError, OSError) as e:
            self.lease.release()
            raise StoreError(f"invalid --storage: the Optuna storage {storage_url} cannot be used "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        self._next = 0

    @property
    def total(self) -> int:
        return sum(a.total for a in self.arms)

    def done(self) -> int:
        return sum(a.done() for a in self.arms)

    def next_array(self, size: int) -> tuple[ArmSearch, list[tuple[int, MemberSpec]]] | None:
        """Up to `size` members of one arm, arms in turn; None when nothing is left to ask."""
        for i in range(len(self.arms)):
            arm = self.arms[(self._next + i) % len(self.arms)]
            batch = arm.ask(size)
            if batch:
                self._next = (self._next + i + 1) % len(self.arms)
                return arm, batch
        return None


def storage_state(url: str) -> str:
    """What a storage holds, looked at read-only (opening one with Optuna would write its schema): "absent" (no
    file, or a server database without tables), "optuna" (Optuna's tables, or a journal file), or "foreign" (a
    SQLite file or database with other tables: MLflow's store, another program's)."""
    import sqlite3

    if "://" not in url:
        return "optuna" if Path(url).expanduser().is_file() else "absent"
    path = sqlite_path(url)
    if path is None:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
    else:
        if not path.is_file() or path.stat().st_size == 0:
            return "absent"
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            try:
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            finally:
                con.close()
        except sqlite3.DatabaseError:
            return "foreign"
    if not tables:
        return "absent"
    return "optuna" if {"studies", "trials", "study_user_attributes"} <= tables else "foreign"


def precheck_identity(storage_url: str, spec: StudySpec, resume: bool = False) -> None:
    """check_identity before any store is written (the driver runs it before creating the MLflow store): read
    only; nothing to check where the storage does not exist yet; a database of other tables is refused, and so
    is a new run (not `resume`) of a name whose Optuna studies hold finished members: the run would count them
    as done and never record them (they belong to the records of wherever the study ran)."""
    state = storage_state(storage_url)
    if state == "foreign":
        raise StoreError(f"invalid --storage: {masked(storage_url)} is a database without Optuna's tables (MLflow's "
                         f"store, or another program's): name a new file or an Optuna storage")
    if state != "optuna":
        return
    storage = open_storage(storage_url)
    check_identity(storage, spec)
    if resume:
        return
    for arm, study_id in _arm_studies(storage, spec):
        done = len(storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,)))
        if done:
            raise SpecError(f"invalid name: the Optuna storage {masked(storage_url)} already holds {done} finished "
                            f"members of study {spec.name!r} (arm {arm.name}): `study resume {spec.name}` where it "
                            f"was recorded, or choose another name or storage")


def holds_study(storage_url: str, spec: StudySpec) -> bool:
    """Whether a storage holds an Optuna study of this spec's arms made by this spec (the one a study started
    with, under another spelling, or a copy of it); read only: a storage that does not exist holds none."""
    try:
        if storage_state(storage_url) != "optuna":
            return False
        storage = open_storage(storage_url)
        for _, study_id in _arm_studies(storage, spec):
            if storage.get_study_user_attrs(study_id).get("spec_identity") in (None, spec.identity()):
                return True
    except Exception:  # unreadable: it holds nothing this study can resume from
        return False
    return False


def read_lease(storage_url: str, name: str) -> tuple[bool | None, str]:
    """Whether the driver lease of study `name` (the Optuna study NAME.driver, search.Lease) is held, and by
    whom; (None, why) when it cannot be read. Looking never creates a store: a SQLite or journal file that
    does not exist holds no lease."""
    try:
        if "://" in storage_url and sqlite_path(storage_url) is None:
            check_optuna_url(storage_url, writing=False)  # a reachable server, within seconds, before connecting
        state = storage_state(storage_url)  # RDBStorage would create Optuna's schema in anything else
        if state != "optuna":
            return (False, "no lease") if state == "absent" else (None, "lease unreadable: not an Optuna storage")
        storage = open_storage(storage_url)  # an existing file or server with Optuna's tables: nothing is created
        study_id = storage.get_study_id_from_name(f"{name}.driver")
        attrs = storage.get_study_user_attrs(study_id)
    except KeyError:
        return False, "no lease"
    except Exception as e:
        return None, f"lease unreadable: {type(e).__name__}"
    age = time.time() - float(attrs.get("heartbeat", 0.0))
    return holder_alive(attrs, Lease.STALE_S), f"{attrs.get('holder', 'unknown driver')}, heartbeat {age:.0f} s ago"


def study_state(row: dict, storage: str) -> str:
    """What a study is doing: its parent run's status, and for a RUNNING one whether its driver lease is held."""
    status, name = row["status"], row["name"]
    complete = row["planned"] is not None and row["done"] >= row["planned"]
    if status == "RUNNING":
        held, who = read_lease(storage, name)
        if held:
            training = f", {row['training']} members training" if row["training"] else ""
            return f"running ({who}{training})"
        if held is None:
            return f"running? ({who})"
        return f"stopped: its driver is gone ({who}); study resume {name}"
    if status == "FINISHED":
        return "finished" if complete else "finished, incomplete"
    if status == "KILLED":
        return f"interrupted; study resume {name}"
    if status == "FAILED":
        return f"stopped with an error; study resume {name}"
    return status.lower()


def dashboard_studies(storage_url: str, name: str) -> list[tuple[str, int]]:
    """(Optuna study name, id) of study `name`'s arms and settings studies, for optuna-dashboard's addresses
    (/dashboard/studies/ID); read only, and [] for a storage that does not hold Optuna's tables."""
    if storage_state(storage_url) != "optuna":
        return []
    storage = open_storage(storage_url)
    out = []
    import re

    mine = re.compile(rf"{re.escape(name)}\.[^.]+(\.settings)?")  # NAME.ARM[.settings]: an arm has no '.', so
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):  # study NAME.x's are not listed
        if mine.fullmatch(s.study_name) and not s.study_name.endswith(".driver"):
            out.append((s.study_name, storage.get_study_id_from_name(s.study_name)))
    return sorted(out, key=lambda x: (x[0].endswith(".settings"), x[0]))
