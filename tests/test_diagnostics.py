"""The decay diagnostics (study/diagnostics.py) against hand computations, and on the engine's rows."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from study import diagnostics as diag
from study.data import load_dataset
from study.engine import ArrayConfig, ArrayTrainer
from study.optim import SGD, Adam, Adagrad
from study.spec import PRECONDITIONER_METRICS, DataSpec, MemberSpec, ModelSpec, TrainSpec


def _adam_after(steps: int, decay: str, lr, wd, betas=(0.9, 0.999), eps=1e-8):
    """A (K=2, 3, 4) parameter after `steps` Adam steps on fixed random gradients, and the gradients used."""
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(2, 3, 4, generator=gen, dtype=torch.float64))
    opt = Adam([{"params": [p], "weight_decay": torch.tensor(wd)}], lr=torch.tensor(lr), betas=betas, eps=eps,
               decay=decay)
    grads = []
    for _ in range(steps):
        g = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64) * torch.logspace(-3, 1, 4, dtype=torch.float64)
        grads.append(g)
        p.grad = g.clone()
        opt.step()
    return p, opt.state[p], grads


def test_coupled_adam_spread_is_the_hand_computed_ratio():
    lr, wd, betas, eps = [0.01, 0.02], [0.1, 0.3], (0.9, 0.999), 1e-8
    p, state, grads = _adam_after(5, "coupled", lr, wd, betas, eps)
    # by hand: the L2 term enters the gradient, so v accumulates (g + λ·w_before)²; read v from the state's own
    # arithmetic independently: v_t = β₂·v + (1 − β₂)·g_t² with g_t the decayed gradient, v̂ = v / (1 − β₂⁵)
    v = state["exp_avg_sq"].numpy()
    v_hat = v / (1 - betas[1] ** 5)
    for k in range(2):
        rate = lr[k] * wd[k] / (np.sqrt(v_hat[k]).ravel() + eps)
        n = rate.size
        lo, hi = np.sort(rate)[math.ceil(0.1 * n) - 1], np.sort(rate)[math.ceil(0.9 * n) - 1]
        got = diag.decay_spread([diag.decay_rates("adam", "coupled", torch.tensor(lr[k] * wd[k])[None].expand(2),
                                                  state, {"eps": eps, "betas": betas})])[k]
        assert float(got) == pytest.approx(hi / lo, rel=1e-6)
    # the rate itself: η·λ/(√v̂ + ε) per weight, with v̂ recomputed from the gradients the optimizer saw
    w, vv = None, np.zeros((2, 3, 4))
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64).numpy()
    m = np.zeros_like(w)
    for t, g in enumerate(grads, 1):
        g = g.numpy() + np.array(wd)[:, None, None] * w
        m = betas[0] * m + (1 - betas[0]) * g
        vv = betas[1] * vv + (1 - betas[1]) * g * g
        w = w - np.array(lr)[:, None, None] * (m / (1 - betas[0] ** t)) / (np.sqrt(vv / (1 - betas[1] ** t)) + eps)
    rates = diag.decay_rates("adam", "coupled", torch.tensor(lr) * torch.tensor(wd), state, {"eps": eps, "betas": betas})
    np.testing.assert_allclose(rates.numpy(), (np.array(lr) * np.array(wd))[:, None]
                               / (np.sqrt(vv / (1 - betas[1] ** 5)).reshape(2, -1) + eps), rtol=1e-6)  # float32
    assert np.allclose(p.detach().numpy(), w)  # the optimizer did what the hand computation did


@pytest.mark.parametrize("decay", ["decoupled", "independent"])
def test_uniform_decay_has_spread_one(decay):
    _, state, _ = _adam_after(3, decay, [0.01, 0.02], [0.1, 0.3])
    got = diag.decay_spread([diag.decay_rates("adam", decay, torch.tensor([0.001, 0.006]), state, {"eps": 1e-8, "betas": (0.9, 0.999)})])
    assert got.tolist() == [1.0, 1.0]


def test_adagrad_uses_its_accumulated_sum():
    gen = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.randn(1, 2, 5, generator=gen, dtype=torch.float64))
    opt = Adagrad([{"params": [p], "weight_decay": torch.tensor([0.1])}], lr=torch.tensor([0.1]), eps=1e-10)
    p.grad = torch.randn(1, 2, 5, generator=gen, dtype=torch.float64)
    opt.step()
    s = opt.state[p]["sum"]
    rates = diag.decay_rates("adagrad", "coupled", torch.tensor([0.01]), opt.state[p], {"eps": 1e-10})
    assert torch.allclose(rates.double(), 0.01 / (s.sqrt().flatten(1) + 1e-10), rtol=1e-6)


@pytest.mark.parametrize("centered", [False, True])
def test_rmsprop_divides_by_what_torch_divides_by(centered):
    """RMSprop's √v̂ is the denominator torch.optim.RMSprop's step uses (ε aside): recovered from one plain step of
    torch's own, p₁ = p₀ − η·g/(√v̂ + ε), so the check does not read the state the way the code under test does."""
    from study.optim import RMSprop

    gen = torch.Generator().manual_seed(2)
    p = torch.nn.Parameter(torch.randn(1, 2, 5, generator=gen, dtype=torch.float64))
    q = torch.nn.Parameter(p.detach().clone())
    ours = RMSprop([{"params": [p], "weight_decay": torch.tensor([0.0])}], lr=torch.tensor([0.1]), alpha=0.9,
                   eps=1e-8, centered=centered)
    theirs = torch.optim.RMSprop([q], lr=0.1, alpha=0.9, eps=1e-8, centered=centered, foreach=False)
    for _ in range(3):
        g = torch.randn(1, 2, 5, generator=gen, dtype=torch.float64)
        p.grad, q.grad = g.clone(), g.clone()
        before = q.detach().clone()
        ours.step()
        theirs.step()
    denominator = 0.1 * g / (before - q.detach()) - 1e-8
    root = diag.sqrt_second_moment("rmsprop", ours.state[p], {"centered": centered, "eps": 1e-8})
    assert torch.allclose(root.double(), denominator.float().double(), rtol=1e-5)
    assert diag.has_preconditioner("rmsprop") and not diag.has_preconditioner("lion")


def test_no_step_yet_and_no_decay_give_nan():
    assert math.isnan(diag.decay_rates("adam", "coupled", torch.tensor([0.1]), {}, {"eps": 1e-8, "betas": (0.9, 0.999)}).item())
    _, state, _ = _adam_after(2, "coupled", [0.01, 0.02], [0.0, 0.1])
    got = diag.decay_spread([diag.decay_rates("adam", "coupled", torch.tensor([0.0, 0.002]), state, {"eps": 1e-8, "betas": (0.9, 0.999)})])
    assert math.isnan(got[0]) and math.isfinite(got[1])


def test_rank_correlation_is_spearman():
    gen = np.random.default_rng(3)
    a, b = gen.normal(size=(4, 30)), gen.normal(size=(4, 30))
    b[1] = a[1] * 2 + 0.1 * b[1]           # nearly monotone: close to 1
    b[2] = -np.exp(a[2])                    # exactly anti-monotone: -1
    got = diag.rank_correlation(torch.tensor(a), torch.tensor(b))
    want = [stats.spearmanr(a[k], b[k]).statistic for k in range(4)]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    assert got[2] == pytest.approx(-1.0)
    assert math.isnan(diag.rank_correlation(torch.ones(1, 5), torch.arange(5.0)[None])[0])  # no spread
    ties_a = torch.tensor([[1.0, 2.0, 2.0, 3.0, 0.0, 0.0]])
    ties_b = torch.tensor([[0.5, 1.0, 3.0, 2.0, 0.1, 0.2]])
    assert float(diag.rank_correlation(ties_a, ties_b)[0]) == pytest.approx(
        stats.spearmanr(ties_a[0], ties_b[0]).statistic, abs=1e-6)   # ties take their average rank


def test_norm_vs_sqrt_v_is_within_each_tensor():
    """Two tensors whose channels each rank perfectly (+1 within each) but whose layers differ in scale the other
    way round: pooled, they would correlate negatively; within each tensor the answer is +1."""
    w1 = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1) * torch.ones(1, 4, 3)
    w2 = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1) * torch.ones(1, 3, 2, 2)
    v1, v2 = torch.tensor([[10.0, 20.0, 30.0, 40.0]]), torch.tensor([[0.1, 0.2, 0.3]])
    assert float(diag.norm_vs_sqrt_v([w1, w2], [v1, v2])[0]) == pytest.approx(1.0)
    pooled = diag.rank_correlation(torch.cat([diag.channel_norms(w1), diag.channel_norms(w2)], 1), torch.cat([v1, v2], 1))
    assert float(pooled[0]) < 0


def _random_walk_angle(make, weight_decay: float, steps: int = 6000, d: int = 1000) -> float:
    """The mean angular update over the last 1,500 steps of a scale-invariant weight driven by pure-noise gradients
    (orthogonal to w, scaled by 1/‖w‖, as batch norm makes them), stepped by the project's own optimizer."""
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(1, d, dtype=torch.float64, generator=gen))
    opt = make([{"params": [w], "weight_decay": torch.tensor([weight_decay])}])
    angles = []
    for t in range(steps):
        xi = torch.randn(1, d, dtype=torch.float64, generator=gen)
        u = w.detach() / w.detach().norm()
        w.grad = (xi - (xi * u).sum() * u) / w.detach().norm()
        before = u.clone()
        opt.step()
        if t >= steps - 1500:
            after = w.detach() / w.detach().norm()
            angles.append(2 * math.asin(min(1.0, float((before - after).norm()) / 2)))
    return sum(angles) / len(angles)


@pytest.mark.parametrize("optimizer, decay, lr, weight_decay", [
    ("sgd", "coupled", 0.1, 1e-3), ("sgd", "decoupled", 0.1, 1e-2), ("sgd", "independent", 0.1, 1e-3),
    ("adam", "decoupled", 0.01, 0.1), ("adam", "independent", 0.01, 1e-3)])
def test_equilibrium_angle_is_where_a_scale_invariant_weight_settles(optimizer, decay, lr, weight_decay):
    """Each law against a simulation at rate r = 1e-3 per step (τ = 1,000 steps, run for 6,000): coupled SGD's
    decay passes through the momentum buffer, √(2r/(1 + μ)); decoupled and independent decay do not,
    √(2r·(1 − β)/(1 + β)) — 3.2× (SGD, μ = 0.9) and 4.4× (Adam, β₁ = 0.9) below √(2r)."""
    if optimizer == "sgd":
        make = lambda g: SGD(g, lr=torch.tensor([lr]), momentum=0.9, decay=decay)  # noqa: E731
    else:
        make = lambda g: Adam(g, lr=torch.tensor([lr]), betas=(0.9, 0.999), decay=decay)  # noqa: E731
    law = diag.equilibrium_angle(optimizer, decay, torch.tensor([lr]), 1.0, torch.tensor([weight_decay]),
                                 momentum=0.9, beta1=0.9)
    assert _random_walk_angle(make, weight_decay) == pytest.approx(float(law), rel=0.03)


def test_equilibrium_angle_has_no_law_where_none_is_stated():
    lr, wd = torch.tensor([0.1, 0.4]), torch.tensor([1e-3, 5e-4])
    assert torch.isnan(diag.equilibrium_angle("adam", "coupled", lr, 0.5, wd)).all()  # the rate varies per weight
    assert torch.isnan(diag.equilibrium_angle("lion", "decoupled", lr, 0.5, wd)).all()
    assert torch.isnan(diag.equilibrium_angle("sgd", "coupled", lr, 0.5, wd, momentum=0.9, nesterov=True)).all()
    # independent decay follows the schedule s_t, never η
    assert torch.allclose(diag.equilibrium_angle("adam", "independent", lr, 0.5, wd),
                          torch.sqrt(2 * 0.5 * wd * 0.1 / 1.9))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_subset=256, test_subset=128)


def _trainer(digits, optimizer, decay, epochs=2):
    members = [MemberSpec(optimizer, decay, 0.003 * (1 + k), 0.05, seed=k) for k in range(3)]
    config = ArrayConfig(ModelSpec("resnet8"), TrainSpec(epochs=epochs, batch_size=32), DataSpec())
    return ArrayTrainer(members, digits, config, "cpu")


def test_rows_carry_the_diagnostics_an_optimizer_has(digits):
    adam = _trainer(digits, "adam", "coupled").run()
    sgd = _trainer(digits, "sgd", "coupled", epochs=1).run()
    for r in adam:
        for row in r["history"]:
            assert row["decay_spread"] > 2 and -1 <= row["norm_sqrt_v_corr"] <= 1   # L2 through ÷√v̂: uneven
            assert math.isnan(row["angular_equilibrium"]) and row["head_norm"] > 0
    for r in sgd:
        assert not set(PRECONDITIONER_METRICS) & set(r["history"][0])
        assert r["history"][0]["angular_equilibrium"] > 0 and r["history"][0]["head_norm"] > 0


@pytest.mark.parametrize("optimizer", sorted(__import__("study.registry", fromlist=["OPTIMIZERS"]).OPTIMIZERS))
def test_every_registered_optimizer_trains_an_array_with_the_diagnostics_it_has(digits, optimizer):
    """An optimizer added to the registry trains in the engine at once; its rows carry the √v̂ diagnostics (and its
    last epoch the per-channel records) exactly when its entry says it divides by a per-weight √v̂."""
    from study.registry import OPTIMIZERS
    from study.spec import CHANNELS

    members = [MemberSpec(optimizer, "coupled", 1e-3 * (1 + k), 0.05, seed=k) for k in range(2)]
    config = ArrayConfig(ModelSpec("resnet8"), TrainSpec(epochs=1, batch_size=64), DataSpec())
    rows = ArrayTrainer(members, digits, config, "cpu").train_epoch()
    has = OPTIMIZERS[optimizer].preconditioned
    for row in rows:
        assert math.isfinite(row["train_loss"]) and (CHANNELS in row) == has
        assert set(PRECONDITIONER_METRICS) <= set(row) if has else not set(PRECONDITIONER_METRICS) & set(row)
        if has:
            assert row["decay_spread"] > 1 and -1 <= row["norm_sqrt_v_corr"] <= 1  # L2 through ÷√v̂: uneven


def test_resumed_correlation_equals_the_uninterrupted_one(digits):
    straight = _trainer(digits, "adam", "decoupled", epochs=3)
    straight.run()
    first = _trainer(digits, "adam", "decoupled", epochs=3)
    first.train_epoch()
    first.train_epoch()
    resumed = _trainer(digits, "adam", "decoupled", epochs=3)
    resumed.load_state_dict(first.state_dict())
    resumed.run()
    assert [h[-1]["norm_sqrt_v_corr"] for h in resumed.history] == [h[-1]["norm_sqrt_v_corr"] for h in straight.history]


def test_a_diverged_member_reports_no_diagnostics(digits):
    trainer = _trainer(digits, "adam", "decoupled", epochs=1)
    trainer.alive[1] = False             # as train_step marks a member whose loss turned non-finite
    rows = trainer.train_epoch()
    dead, live = rows[1], rows[0]
    for key in ("angular_equilibrium", "head_norm", "decay_spread", "norm_sqrt_v_corr"):
        assert math.isnan(dead[key]) and math.isfinite(live[key]), key


def test_the_last_epoch_carries_each_channels_norm_and_mean_sqrt_v(digits):
    """The figure's points: only the last epoch's row has them, per decayed tensor and output channel, equal to the
    channel norms of the final weights and the √v̂ averaged over the epochs' ends; SGD members have none."""
    from study.spec import CHANNELS

    trainer = _trainer(digits, "adam", "coupled", epochs=2)
    first = trainer.train_epoch()
    assert not any(CHANNELS in r for r in first)
    last = trainer.train_epoch()
    mean_v = [v / trainer.sqrt_v_epochs for v in trainer.sqrt_v_sum]
    assert trainer.sqrt_v_epochs == 2
    for k, row in enumerate(last):
        ch = row[CHANNELS]
        assert len(ch["norm"]) == len(ch["sqrt_v"]) == len(trainer.decayed)
        for t, w in enumerate(trainer.decayed):
            np.testing.assert_allclose(ch["norm"][t], diag.channel_norms(w)[k].numpy(), rtol=1e-5)
            np.testing.assert_allclose(ch["sqrt_v"][t], mean_v[t][k].numpy(), rtol=1e-5)
    assert not any(CHANNELS in r for r in _trainer(digits, "sgd", "coupled", epochs=1).train_epoch())
