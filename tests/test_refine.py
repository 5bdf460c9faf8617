"""search.refine on a planted landscape, with a real Optuna storage and no training: a grid whose ridge
leaves it at the high weight-decay edge asks for the missing columns and, completed, recovers the slope."""

import math

import numpy as np
import pytest

from study.landscape import arm_landscape, refine_columns, refine_weight_decays
from study.search import StudySearch
from study.spec import spec_from_dict

TRUE_SLOPE = -1.0


def planted_error(lr: float, wd: float, seed: int) -> float:
    """A coupled-style basin: best log λ = log(2e-4) − log η, quadratic around it, seed noise σ = 0.01."""
    best = math.log(2e-4) + TRUE_SLOPE * math.log(lr)
    noise = np.random.default_rng(abs(hash((round(lr, 12), round(wd, 12), seed))) % 2**32).normal(0, 0.01)
    return 0.1 + 0.05 * (math.log(wd) - best) ** 2 + 0.02 * math.log(lr / 0.03) ** 2 + noise


def _train_all(search: StudySearch, told: list[dict]) -> None:
    while (nxt := search.next_array(8)) is not None:
        arm, batch = nxt
        for number, m in batch:
            err = planted_error(m.lr, m.weight_decay, m.seed)
            arm.tell(number, err)
            told.append({"optimizer": m.optimizer, "decay": m.decay, "lr": m.lr, "weight_decay": m.weight_decay,
                         "seed": m.seed, "error": err, "diverged": False})


def test_refine_completes_a_grid_whose_ridge_leaves_it(tmp_path):
    spec = spec_from_dict({
        "name": "planted", "search": {"sampler": "grid", "seeds": [0, 1], "refine": 2},
        "arms": [{"optimizer": "sgd", "decay": "coupled", "lr": {"low": 0.01, "high": 0.1, "points": 6},
                  "weight_decay": {"low": 1e-3, "high": 1e-2, "points": 6}}]})
    search = StudySearch(spec, f"sqlite:///{tmp_path / 'optuna.db'}")
    told: list[dict] = []
    _train_all(search, told)
    assert len(told) == 72 == search.done() == search.total
    before = arm_landscape(told, metric="error")
    assert sum(c == "high" for c in before.censored) >= 2  # the ridge leaves the grid at the high edge
    rounds, after = 0, before
    while (new := refine_columns(after)) and rounds < spec.search.refine:
        assert min(new) > 1e-2  # only columns beyond the edge
        added = search.arms[0].extend(new)
        assert added == 6 * len(new) * 2 and search.total == len(told) + added
        _train_all(search, told)
        after = arm_landscape(told, metric="error")
        rounds += 1
    assert rounds >= 1
    assert not any(after.censored), after.censored   # the landscape completed itself
    assert abs(after.slope - TRUE_SLOPE) < 0.1, after.slope
    # the records stay exact: every member once, nothing re-run
    keys = [(m["lr"], m["weight_decay"], m["seed"]) for m in told]
    assert len(keys) == len(set(keys)) == search.done()
    # a resumed driver (a new StudySearch on the same storage) sees the refined grid as the study's
    search.lease.release()
    again = StudySearch(spec, f"sqlite:///{tmp_path / 'optuna.db'}").arms[0]
    assert again.total == len(told) and not again.has_work()


def test_refine_never_proposes_a_decay_factor_below_zero():
    """Independent decay multiplies by 1 − s_t·λ: a column at λ ≥ 1 would flip the weights' sign. A ridge that
    leaves the grid towards λ = 1 is completed only up to below it."""
    members = [{"optimizer": "sgd", "decay": "independent", "lr": lr, "weight_decay": wd, "seed": 0,
                "error": 0.1 + 0.05 * (math.log(wd) - math.log(3.0)) ** 2 + 0.01 * math.log(lr) ** 2, "diverged": False}
               for lr in (0.01, 0.03, 0.1, 0.3) for wd in (0.01, 0.03, 0.1, 0.3)]
    land = arm_landscape(members, metric="error")
    assert all(c == "high" for c in land.censored)  # every row's best λ (3.0) lies beyond 0.3
    assert max(refine_weight_decays(land)) > 1.0  # where the fitted ridge points
    new = refine_columns(land)  # what search.refine trains
    assert new and max(new) < 1.0, new


def test_a_lost_storage_is_rebuilt_with_refined_columns_that_never_finished(tmp_path):
    """A refine round added columns, then the Optuna storage was lost before any of their members finished:
    the records hold those members only as started. Rebuilt from them, the search knows the columns and trains
    exactly the members not finished; the finished ones are never trained again."""
    from study.search import Finished
    from study.spec import MemberSpec

    spec = spec_from_dict({
        "name": "lostrefine", "search": {"sampler": "grid", "seeds": [0], "refine": 1, "points": 2},
        "arms": [{"optimizer": "sgd", "decay": "coupled", "lr": {"low": 0.01, "high": 0.1},
                  "weight_decay": {"low": 1e-3, "high": 1e-2}}]})
    first = StudySearch(spec, f"sqlite:///{tmp_path / 'first.db'}")
    told: list[dict] = []
    _train_all(first, told)
    first.arms[0].extend([1e-1])  # the refine round's column
    first.lease.release()
    records = [Finished(MemberSpec("sgd", "coupled", t["lr"], t["weight_decay"], seed=0), t["error"], False, f"r{i}")
               for i, t in enumerate(told)]
    records += [Finished(MemberSpec("sgd", "coupled", lr, 1e-1, seed=0), None, False, f"s{i}")
                for i, lr in enumerate((0.01, 0.1))]  # started, never finished
    rebuilt = StudySearch(spec, f"sqlite:///{tmp_path / 'rebuilt.db'}", finished=lambda: records)  # a new, empty storage
    assert rebuilt.total == 6 and rebuilt.done() == 4
    again: list[dict] = []
    _train_all(rebuilt, again)
    assert sorted((t["lr"], t["weight_decay"]) for t in again) == [(0.01, 1e-1), (0.1, 1e-1)]
    assert rebuilt.done() == rebuilt.total == 6


def test_a_name_made_by_another_spec_is_refused_before_its_queued_trials_run(tmp_path):
    """A start interrupted after queuing its grid leaves trials in Optuna; a run of the same name with another
    grid must not train them (it trained the old grid and counted "8/4 members"): refused, the lease freed."""
    import pytest

    from study.spec import SpecError

    def spec(points):
        return spec_from_dict({
            "name": "same", "search": {"sampler": "grid", "seeds": [0]},
            "arms": [{"optimizer": "sgd", "decay": "coupled", "lr": {"low": 0.01, "high": 0.1, "points": points},
                      "weight_decay": {"low": 1e-3, "high": 1e-2, "points": points}}]})
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = StudySearch(spec(10), url)
    assert first.next_array(4) is not None           # trials queued and running, then the driver stops
    first.lease.release()
    with pytest.raises(SpecError, match=r"invalid name: the Optuna study 'same.sgd-coupled' was made by another spec"):
        StudySearch(spec(2), url)
    again = StudySearch(spec(10), url)               # the same spec picks its own study up again
    assert again.total == 100
    again.lease.release()
    # the identity covers what the numbers depend on, not where or how they are recorded and run
    a = spec(2)
    import dataclasses
    b = dataclasses.replace(a, execution=dataclasses.replace(a.execution, members_per_trial=3),
                            tracking=dataclasses.replace(a.tracking, experiment="elsewhere"))
    assert a.identity() == b.identity() != spec(3).identity()


def test_refine_stops_where_decay_does_nothing_within_the_run():
    """Rows whose best λ is the grid's smallest, already at a decay timescale of many runs, prefer (almost) no
    decay: refine adds no column below the timescale floor (1/(10·T·max η) coupled), and the advice says why
    instead of 'extend weight_decay.low to about 3e-10'."""
    from study.landscape import edge_advice, min_weight_decay

    steps = 480
    members = [{"optimizer": "sgd", "decay": "coupled", "lr": lr, "weight_decay": wd, "seed": 0, "total_steps": steps,
                "error": 0.1 + 0.05 * (math.log(wd) - math.log(1e-9)) ** 2 + 0.01 * math.log(lr) ** 2, "diverged": False}
               for lr in (0.01, 0.03, 0.1, 0.3) for wd in (1e-5, 1e-4, 1e-3, 1e-2)]
    land = arm_landscape(members, metric="error")
    assert all(c == "low" for c in land.censored)
    floor = min_weight_decay(land)
    assert math.isclose(floor, 1 / (10 * steps * 0.3))
    assert min(refine_weight_decays(land)) < floor          # where the ridge points, far below
    assert all(w >= floor for w in refine_columns(land)), refine_columns(land)
    advice = edge_advice(land)
    assert "prefer little or no decay" in advice and "extend weight_decay.low" not in advice, advice
    # a grid whose low edge is still far above the floor is told to extend down to the floor, not beyond
    shifted = [{**m, "weight_decay": m["weight_decay"] * 1e4,
                "error": 0.1 + 0.05 * (math.log(m["weight_decay"] * 1e4) - math.log(1e-9)) ** 2} for m in members]
    land = arm_landscape(shifted, metric="error")
    new = refine_columns(land)
    assert new and min(new) >= min_weight_decay(land)
    advice = edge_advice(land)
    assert "extend weight_decay.low to about" in advice, advice
    assert float(advice.rsplit("about ", 1)[1].split()[0]) >= min_weight_decay(land) * 0.99, advice


def test_coupled_adam_has_a_timescale_through_a_typical_sqrt_v():
    """Coupled L2 under Adam decays weight i at η·λ/√v̂_i per step: τ ≈ √v̂/(η·λ) with the registry's typical
    √v̂ (docs/science.md). Refine's floor and `study validate`'s warning use it; before, coupled Adam had no floor
    (a smoke run's refine added λ = 1e-9) and no warning."""
    from study.landscape import min_weight_decay, timescale_rule
    from study.registry import OPTIMIZERS
    from study.spec import decay_timescale, spec_from_dict, timescale_warnings

    sqrt_v = OPTIMIZERS["adam"].coupled_sqrt_v
    assert decay_timescale("coupled", 0.01, 0.1, "adam") == pytest.approx(sqrt_v / (0.01 * 0.1))
    assert decay_timescale("coupled", 0.01, 0.1, "sgd") == pytest.approx(1 / (0.01 * 0.1))
    assert decay_timescale("decoupled", 0.01, 0.1, "adam") == pytest.approx(1 / (0.01 * 0.1))
    steps = 240
    members = [{"optimizer": "adam", "decay": "coupled", "lr": lr, "weight_decay": wd, "seed": 0, "total_steps": steps,
                "error": 0.1 + 0.05 * (math.log(wd) - math.log(1e-12)) ** 2, "diverged": False}
               for lr in (0.001, 0.003, 0.01) for wd in (1e-7, 1e-6, 1e-5, 1e-4)]
    land = arm_landscape(members, metric="error")
    floor = min_weight_decay(land)
    assert floor == pytest.approx(sqrt_v / (10 * steps * 0.01))
    assert all(w >= floor for w in refine_columns(land)), refine_columns(land)
    assert timescale_rule("adam", "coupled").startswith("√v̂/(η·λ)") and timescale_rule("sgd", "coupled") == "1/(η·λ)"
    raw = {"name": "t", "data": {"dataset": "digits", "train_subset": 400}, "model": {"name": "resnet8"},
           "train": {"epochs": 20, "batch_size": 32},
           "arms": [{"optimizer": "adam", "decay": "coupled", "lr": {"low": 1e-3, "high": 1e-2},
                     "weight_decay": {"low": 1e-9, "high": 1e-8}}], "search": {"points": 2}}
    (warning,) = timescale_warnings(spec_from_dict(raw), 400)
    assert "adam-coupled" in warning and "decay does nothing" in warning
    raw["arms"][0]["weight_decay"] = {"low": 1e-4, "high": 1e-1}      # τ = √v̂/(η·λ) reaches the run: no warning
    assert timescale_warnings(spec_from_dict(raw), 400) == []


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_resumed_sampler_draws_new_settings_not_the_ones_it_trained(tmp_path, sampler):
    """A seeded sampler made anew on resume would start its sequence again and draw the settings already trained
    (their seeds all retrained): a resumed arm's sampler goes on from the trials its study holds."""
    spec = spec_from_dict({
        "name": "sampled", "search": {"sampler": sampler, "trials": 6, "seeds": [0, 1]},
        "arms": [{"optimizer": "sgd", "decay": "coupled", "lr": {"low": 0.01, "high": 0.1},
                  "weight_decay": {"low": 1e-3, "high": 1e-2}}]})
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    settings = []
    search = StudySearch(spec, url)
    arm, batch = search.next_array(4)  # two settings, each with both seeds
    for number, m in batch:
        arm.tell(number, planted_error(m.lr, m.weight_decay, m.seed))
        settings.append((m.lr, m.weight_decay))
    search.lease.release()
    search = StudySearch(spec, url)  # resumed: a new sampler
    told: list[dict] = []
    _train_all(search, told)
    settings += [(m["lr"], m["weight_decay"]) for m in told]
    assert len(settings) == 12 and len(set(settings)) == 6, sorted(set(settings))  # 6 settings, 2 seeds each
