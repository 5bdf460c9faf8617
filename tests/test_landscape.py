"""Landscape statistics on planted landscapes whose true λ*(η) is known."""

import math

import numpy as np
import pytest

from study.landscape import arm_landscape, landscapes, row_optimum

LRS = np.geomspace(0.01, 0.3, 6)
WDS = np.geomspace(1e-4, 1.0, 8)


def planted(rng, seeds, sigma=0.02, arms=(("sgd", "coupled", -1.0), ("sgd", "independent", 0.0))):
    """error = 0.1 + 0.02·(log λ − log λ*(η))² + noise, with λ*(η) = 3e-3·(η/0.055)^slope."""
    members = []
    for opt, decay, slope in arms:
        for s in range(seeds):
            for lr in LRS:
                center = math.log(3e-3) + slope * math.log(lr / 0.055)
                for wd in WDS:
                    err = 0.1 + 0.02 * (math.log(wd) - center) ** 2 + rng.normal(0, sigma)
                    members.append(dict(optimizer=opt, decay=decay, lr=float(lr), weight_decay=float(wd),
                                        seed=s, error=float(err), diverged=False))
    return members


def test_row_optimum_exact_on_a_parabola():
    x = np.log(WDS)
    assert row_optimum(x, (x - math.log(2e-3)) ** 2) == pytest.approx(math.log(2e-3))
    assert row_optimum(x, (x - math.log(10.0)) ** 2) == pytest.approx(x[-1])  # outside the grid: its edge
    assert math.isnan(row_optimum(x, np.full(8, np.nan)))


def test_noise_free_slopes_are_exact():
    coupled, independent = landscapes(planted(np.random.default_rng(0), 1, sigma=0.0), n_boot=50)
    assert coupled.slope == pytest.approx(-1.0, abs=1e-6)
    assert independent.slope == pytest.approx(0.0, abs=1e-6)
    assert coupled.best_weight_decay[0] == pytest.approx(3e-3 * 0.055 / 0.01, rel=1e-6)


@pytest.mark.parametrize("seeds,draws", [(1, 100), (3, 40)])
def test_intervals_recover_and_cover_the_truth(seeds, draws):
    rng = np.random.default_rng(seeds)
    covered = {-1.0: 0, 0.0: 0}
    for i in range(draws):
        for land, truth in zip(landscapes(planted(rng, seeds), n_boot=200), (-1.0, 0.0)):
            lo, hi = land.slope_ci
            assert lo < land.slope < hi
            covered[truth] += lo <= truth <= hi
            if i == 0:
                assert ("seeds" in land.ci_method) == (seeds > 1)
    assert covered[-1.0] / draws >= 0.9, covered
    assert covered[0.0] / draws >= 0.9, covered


def test_diverged_members_are_not_numbers_on_the_grid():
    members = planted(np.random.default_rng(0), 2, sigma=0.0, arms=(("adam", "decoupled", -1.0),))
    for m in members:
        if m["lr"] == LRS[-1] and m["weight_decay"] == WDS[0]:
            m["diverged"], m["error"] = True, 0.9
    land = arm_landscape(members, n_boot=20)
    assert math.isnan(land.error[-1][0]) and land.diverged[-1][0] == 1.0
    assert land.to_json()["error"][-1][0] is None
    assert land.best["error"] == pytest.approx(np.nanmin(np.array(land.error, dtype=float)))


def test_scattered_samples_are_interpolated():
    rng = np.random.default_rng(0)
    members = []
    for _ in range(120):
        lr, wd = math.exp(rng.uniform(math.log(0.01), math.log(0.3))), math.exp(rng.uniform(math.log(1e-4), 0))
        center = math.log(3e-3) - math.log(lr / 0.055)
        members.append(dict(optimizer="sgd", decay="coupled", lr=lr, weight_decay=wd, seed=0,
                            error=0.1 + 0.02 * (math.log(wd) - center) ** 2, diverged=False))
    land = arm_landscape(members, n_boot=100)
    assert not land.grid and len(land.samples) == 120
    assert land.slope == pytest.approx(-1.0, abs=0.25)
