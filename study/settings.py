"""Seed-averaged settings: one record per arm and (lr, weight_decay), the mean over its seeds.

A member is one setting and one seed; the study's answer (the landscape's cells, its best cell, the slope)
is made of settings averaged over seeds. The records of single members alone make the tools people browse
rank single seeds: optuna-dashboard's "best trial" and MLflow's sorted table would name a lucky seed, not
the study's answer. So once every seed of a setting has finished, the driver records the setting itself:
an MLflow run tagged `role = setting` (tracking.Tracker.record_setting) and a trial of the arm's second
Optuna study `NAME.ARM.settings` (search.ArmSearch.record_setting), both with the value the landscape gives
that cell: the mean of the seeds that did not diverge (none: no value; every seed diverged).

Pure Python: no torch, MLflow or Optuna here; the adapters write what this module decides.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field

from .spec import LANDSCAPE_METRICS, MemberSpec


@dataclass
class Seed:
    """One finished member of a setting: its final metrics, whether it diverged, its MLflow run."""
    final: dict
    diverged: bool
    run_id: str | None


@dataclass
class Setting:
    """An arm's (lr, weight_decay) and its finished seeds; `template` is one of its members (the arm's optimizer
    settings: momentum, betas, eps …, the same for every seed)."""
    template: MemberSpec
    seeds: dict[int, Seed] = field(default_factory=dict)

    @property
    def arm(self) -> str:
        return self.template.arm

    @property
    def lr(self) -> float:
        return self.template.lr

    @property
    def weight_decay(self) -> float:
        return self.template.weight_decay

    def key(self, study: str) -> str:
        """The setting's stable identity, a member's key (MemberSpec.key) without the seed: one record per key."""
        return self.template.key(study).rsplit("|seed=", 1)[0]

    def values(self, metric: str) -> list[float]:
        """The metric of the seeds that did not diverge (the landscape's cell averages these)."""
        return [v for s in self.seeds.values() if not s.diverged
                and (v := float(s.final.get(metric, math.nan))) == v]

    def mean(self, metric: str) -> float:
        """The seed mean of `metric`; NaN when every seed diverged (or none recorded it)."""
        v = self.values(metric)
        return math.fsum(v) / len(v) if v else math.nan

    def std(self, metric: str) -> float:
        """The seeds' sample standard deviation (n − 1); NaN with fewer than two values."""
        v = self.values(metric)
        return statistics.stdev(v) if len(v) > 1 else math.nan

    @property
    def diverged(self) -> int:
        return sum(s.diverged for s in self.seeds.values())

    @property
    def averaged(self) -> int:
        """How many seeds the mean is over (those that did not diverge)."""
        return len(self.seeds) - self.diverged

    def metrics(self) -> dict[str, float]:
        """What the setting's record holds: per landscape metric its seed mean (`final_METRIC`, the name a member
        run gives the same number) and spread (`final_METRIC_std`), and how many seeds were averaged."""
        out = {"seeds_finished": float(len(self.seeds)), "seeds_diverged": float(self.diverged)}
        for m in LANDSCAPE_METRICS:
            out[f"final_{m}"] = self.mean(m)
            out[f"final_{m}_std"] = self.std(m)
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def member(self) -> MemberSpec:
        """The setting as a member without a seed (seed 0 stands for all), for params shared with members."""
        return dataclasses.replace(self.template, seed=0)


class SettingBook:
    """The study's settings as members finish. `add` returns a setting when that member completes it (every
    seed of the study finished), once; a member added twice (a resumed study re-reading its records) counts once."""

    def __init__(self, seeds: list[int] | tuple[int, ...]):
        self.seeds = set(seeds)
        self.settings: dict[tuple, Setting] = {}

    def add(self, member: MemberSpec, final: dict, diverged: bool, run_id: str | None) -> Setting | None:
        key = (member.arm, member.lr, member.weight_decay)
        s = self.settings.setdefault(key, Setting(member))
        if member.seed in s.seeds:
            return None
        s.seeds[member.seed] = Seed(dict(final), bool(diverged), run_id)
        return s if set(s.seeds) >= self.seeds else None

    def complete(self) -> list[Setting]:
        """Every setting whose seeds have all finished."""
        return [s for s in self.settings.values() if set(s.seeds) >= self.seeds]
