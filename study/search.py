"""Optuna adapter: one Optuna study per arm, asked for members and told their final error.

Owns samplers and storage. Only the driver process uses it (one writer), so a SQLite file is safe.
A member is one Optuna trial with params lr, weight_decay (log scale) and seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna

from .spec import ArmSpec, MemberSpec, StudySpec, arm_member, grid_axis

optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_storage(url: str):
    """A SQLAlchemy URL, or a path ending in .log/.journal for Optuna's journal file storage."""
    if "://" not in url:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(url, heartbeat_interval=None, engine_kwargs={"pool_pre_ping": True})


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler for ask-and-tell: the stock one calls study.stop() once the grid is covered,
    which raises outside study.optimize(). The driver stops by counting members instead."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def _sampler(spec: StudySpec, arm: ArmSpec):
    s = spec.search
    if s.sampler == "grid":
        return AskTellGridSampler({"lr": grid_axis(arm.lr, s.points),
                                            "weight_decay": grid_axis(arm.weight_decay, s.points),
                                            "seed": list(s.seeds)}, seed=0)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=0)
    if s.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=0, scramble=True, warn_independent_sampling=False)
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=0)  # Optuna 5: multivariate with constant liar
    return optuna.samplers.GPSampler(seed=0)


class ArmSearch:
    """The Optuna study of one arm. `total` members: grid points × seeds, or trials × seeds."""

    def __init__(self, spec: StudySpec, arm: ArmSpec, storage):
        self.spec, self.arm = spec, arm
        self.study = optuna.create_study(study_name=f"{spec.name}.{arm.name}", storage=storage,
                                         sampler=_sampler(spec, arm), direction="minimize", load_if_exists=True)
        self.study.set_user_attr("arm", arm.name)
        self.study.set_user_attr("metric", "test_error")
        s = spec.search
        per_seed = ((arm.lr.points or s.points) * (arm.weight_decay.points or s.points)
                    if s.sampler == "grid" else s.trials)
        self.total = per_seed * len(s.seeds)

    def _member(self, t) -> MemberSpec:
        return arm_member(self.arm, t.params["lr"], t.params["weight_decay"], t.params["seed"])

    def pending(self) -> list[tuple[int, MemberSpec]]:
        """Members asked but never told (their driver died): resume trains these again under the same trial."""
        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return [(t.number, self._member(t)) for t in running if {"lr", "weight_decay", "seed"} <= set(t.params)]

    def finished(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                                 optuna.trial.TrialState.FAIL)))

    def remaining(self) -> int:
        return max(0, self.total - len(self.study.get_trials(deepcopy=False)))

    def _suggest(self, trial) -> MemberSpec:
        lr = trial.suggest_float("lr", self.arm.lr.low, self.arm.lr.high, log=True)
        wd = trial.suggest_float("weight_decay", self.arm.weight_decay.low, self.arm.weight_decay.high, log=True)
        seed = trial.suggest_categorical("seed", list(self.spec.search.seeds))
        return arm_member(self.arm, lr, wd, seed)

    def ask(self, n: int) -> list[tuple[int, MemberSpec]]:
        """Up to n new members. Model-based samplers see the earlier asks as running (constant liar);
        every sampled setting is repeated for each seed as enqueued trials."""
        out = []
        n = min(n, self.remaining())
        while len(out) < n:
            trial = self.study.ask()
            member = self._suggest(trial)
            out.append((trial.number, member))
            if self.spec.search.sampler != "grid":
                for seed in self.spec.search.seeds:
                    if seed != member.seed and self.remaining() > 0:  # whole seed groups, past n if need be
                        self.study.enqueue_trial({"lr": member.lr, "weight_decay": member.weight_decay, "seed": seed})
                        t2 = self.study.ask()
                        out.append((t2.number, self._suggest(t2)))
        return out

    def tell(self, number: int, error: float | None, diverged: bool = False) -> None:
        """Final test error of a member; None marks it failed. A diverged member is told error 1.0 (the worst)."""
        state = self.study._storage.get_trial(self.study._storage.get_trial_id_from_study_id_trial_number(
            self.study._study_id, number)).state
        if state.is_finished():
            return  # told already (a retry or a resumed driver): never twice
        if error is None:
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)
            return
        trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        self.study._storage.set_trial_user_attr(trial_id, "diverged", bool(diverged))
        value = 1.0 if diverged or not math.isfinite(error) else float(error)
        self.study.tell(number, value)
