"""study.optim against torch.optim step for step, the decay identities, and member-array hyperparameters."""

import copy

import pytest
import torch
from torch.testing import assert_close

from study import optim
from study.registry import OPTIMIZERS

STEPS = 20
CLASSES = {name: entry.load() for name, entry in OPTIMIZERS.items()}  # every optimizer the registry names


def _problem(seed=0):
    """A tiny regression net with weights (decayed) and biases (not), and a fixed data stream."""
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    data = [(torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)) for _ in range(STEPS)]
    return net, data


def _train(net, opt, data, sched=None):
    for x, y in data:
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()
    return [p.detach().clone() for p in net.parameters()]


PEERS = [
    ("sgd", dict(lr=0.05, weight_decay=0.1), torch.optim.SGD, dict(lr=0.05, weight_decay=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=0.1), torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1), torch.optim.SGD,
     dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1), torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    ("adagrad", dict(lr=0.05, weight_decay=0.1), torch.optim.Adagrad, dict(lr=0.05, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01, weight_decay=0.1), torch.optim.RMSprop, dict(lr=0.01, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-6, momentum=0.8, weight_decay=0.1), torch.optim.RMSprop,
     dict(lr=0.01, alpha=0.9, eps=1e-6, momentum=0.8, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1), torch.optim.RMSprop,
     dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1)),
]


@pytest.mark.parametrize("name,ours_kw,peer,peer_kw", PEERS, ids=lambda v: str(v)[:40])
def test_coupled_matches_torch(name, ours_kw, peer, peer_kw):
    net, data = _problem()
    net2 = copy.deepcopy(net)
    ours = _train(net, CLASSES[name](net.parameters(), decay="coupled", **ours_kw), data)
    theirs = _train(net2, peer(net2.parameters(), foreach=False, **peer_kw), data)
    for a, b in zip(ours, theirs):
        assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert not torch.equal(ours[0], _problem()[0][0].weight)  # it trained


def test_decoupled_adam_matches_adamw():
    net, data = _problem()
    net2 = copy.deepcopy(net)
    ours = _train(net, optim.Adam(net.parameters(), lr=0.01, weight_decay=0.3, decay="decoupled"), data)
    theirs = _train(net2, torch.optim.AdamW(net2.parameters(), lr=0.01, weight_decay=0.3, foreach=False), data)
    for a, b in zip(ours, theirs):
        assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_decoupled_sgd_exact_values():
    # w ← w·(1 − lr·λ) − lr·g, with g = 2w for the loss ‖w‖²: w₁ = w₀(1 − lr·λ − 2·lr)
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0]]))
    opt = optim.SGD([w], lr=0.1, weight_decay=0.5, decay="decoupled")
    (w ** 2).sum().backward()
    opt.step()
    assert_close(w.detach(), torch.tensor([[1.0, -2.0]]) * (1 - 0.1 * 0.5) - 0.1 * 2 * torch.tensor([[1.0, -2.0]]))


@pytest.mark.parametrize("name,kw", [("sgd", dict(momentum=0.9)), *((n, {}) for n in OPTIMIZERS),
                                     ("rmsprop", dict(momentum=0.9, centered=True))])
def test_decoupled_equals_independent_with_lr_times_lambda(name, kw):
    lr, lam = 0.03, 0.4
    net, data = _problem(1)
    net2 = copy.deepcopy(net)
    o1 = CLASSES[name](net.parameters(), lr=lr, weight_decay=lam, decay="decoupled", **kw)
    o2 = CLASSES[name](net2.parameters(), lr=lr, weight_decay=lr * lam, decay="independent", **kw)
    s1 = torch.optim.lr_scheduler.CosineAnnealingLR(o1, STEPS)
    s2 = torch.optim.lr_scheduler.CosineAnnealingLR(o2, STEPS)
    for a, b in zip(_train(net, o1, data, s1), _train(net2, o2, data, s2)):
        assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_independent_follows_torch_scheduler_exactly():
    # zero gradients: plain SGD only decays, w_{t+1} = w_t·(1 − s_t·λ) with s_t = lr_t / initial_lr
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = optim.SGD([w], lr=0.2, weight_decay=0.1, decay="independent")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    expected = torch.ones(2, 2)
    for t in range(6):
        s = 0.5 ** (t // 2)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * s)
        w.grad = torch.zeros_like(w)
        opt.step()
        expected = expected * (1 - s * 0.1)
        assert_close(w.detach(), expected, atol=0, rtol=1e-7)
        sched.step()
    # and the decay never scales with the base lr: same λ, 10× the lr, same decay
    w2 = torch.nn.Parameter(torch.ones(2, 2))
    opt2 = optim.SGD([w2], lr=2.0, weight_decay=0.1, decay="independent")
    w2.grad = torch.zeros_like(w2)
    opt2.step()
    assert_close(w2.detach(), torch.full((2, 2), 0.9))


def test_first_step_decays_pre_step_weights():
    w = torch.nn.Parameter(torch.tensor([[2.0]]))
    opt = optim.Adam([w], lr=0.1, weight_decay=0.5, decay="decoupled")
    w.grad = torch.tensor([[1.0]])
    opt.step()
    # AdamW's first step: w·(1 − lr·λ) − lr·sign(g)  (m̂/√v̂ = 1 on the first step, up to eps)
    assert_close(w.detach(), torch.tensor([[2.0 * (1 - 0.05) - 0.1]]), atol=1e-6, rtol=0)


def test_zero_base_lr_is_an_error_for_independent():
    w = torch.nn.Parameter(torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"lr.*> 0.*lr=0"):
        optim.SGD([w], lr=0.0, weight_decay=0.1, decay="independent")


def test_param_groups_never_decay_ndim_le_1():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 2))
    groups, counts = optim.param_groups(net.named_parameters(), 0.5)
    assert counts == {"decayed_tensors": 2, "no_decay_tensors": 4, "decayed_params": 4 * 27 + 2 * 144,
                      "no_decay_params": 4 + 4 + 4 + 2}
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for mode in optim.DECAY_MODES:
        opt = optim.SGD(groups, lr=0.1, weight_decay=0.5, decay=mode)
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    for n, p in net.named_parameters():
        if p.ndim <= 1:
            assert torch.equal(p.detach(), before[n]), n
        else:
            assert p.detach().norm() < before[n].norm(), n
    # member arrays: dim 0 is the member, so a (K, C) batch-norm scale is per-member ndim 1
    stacked = [("w", torch.nn.Parameter(torch.ones(3, 4, 5))), ("bn", torch.nn.Parameter(torch.ones(3, 4)))]
    _, counts = optim.param_groups(stacked, torch.ones(3), member_dims=1)
    assert counts["decayed_tensors"] == 1 and counts["no_decay_tensors"] == 1 and counts["decayed_params"] == 20


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_dict_round_trip_continues_identically(name):
    kw = {"sgd": {"momentum": 0.9}, "rmsprop": {"momentum": 0.9, "centered": True}}.get(name, {})
    net, data = _problem(2)
    net_b = copy.deepcopy(net)
    full = _train(net, CLASSES[name](net.parameters(), lr=0.01, weight_decay=0.1, decay="independent", **kw), data)
    opt_b = CLASSES[name](net_b.parameters(), lr=0.01, weight_decay=0.1, decay="independent", **kw)
    _train(net_b, opt_b, data[:10])
    state = copy.deepcopy(opt_b.state_dict())
    net_c = copy.deepcopy(net_b)
    opt_c = CLASSES[name](net_c.parameters(), lr=0.5, weight_decay=0.0, decay="independent", **kw)
    opt_c.load_state_dict(state)
    resumed = _train(net_c, opt_c, data[10:])
    for a, b in zip(full, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("call,match", [
    (lambda p: optim.SGD(p, lr=-0.1), r"invalid lr.*lr=-0.1"),
    (lambda p: optim.SGD(p, lr=0.1, weight_decay=-1e-4), r"invalid weight_decay.*weight_decay=-0.0001"),
    (lambda p: optim.SGD(p, lr=0.1, decay="l2"), r"invalid decay.*decay='l2'"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), r"invalid betas.*betas=\(0.9, 1.0\)"),
    (lambda p: optim.Adam(p, betas=(-0.1, 0.9)), r"invalid betas"),
    (lambda p: optim.Adagrad(p, eps=-1.0), r"invalid eps.*eps=-1.0"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-0.5), r"invalid momentum.*momentum=-0.5"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), r"invalid nesterov"),
    (lambda p: optim.SGD(p, lr=[0.1, -0.2]), r"invalid lr.*-0.2"),
    (lambda p: optim.build_optimizer("adamax", p, 0.1, "coupled"), r"invalid optimizer.*'adamax'"),
    (lambda p: optim.RMSprop(p, alpha=1.0), r"invalid alpha.*alpha=1.0"),
])
def test_bad_arguments_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call([torch.nn.Parameter(torch.ones(2, 2))])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("decay", optim.DECAY_MODES)
def test_member_array_equals_separate_optimizers(name, decay):
    """One stacked (K, ...) parameter with per-member lr/λ == K parameters with their own optimizers."""
    K, lrs, wds = 3, [0.01, 0.03, 0.1], [0.0, 0.2, 1.0]
    kw = {"sgd": {"momentum": 0.9, "nesterov": True}, "rmsprop": {"momentum": 0.9, "centered": True}}.get(name, {})
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(K, 4, 5, generator=g)
    grads = [torch.randn(K, 4, 5, generator=g) for _ in range(STEPS)]
    stacked = torch.nn.Parameter(w0.clone())
    opt = CLASSES[name]([stacked], lr=torch.tensor(lrs), weight_decay=torch.tensor(wds), decay=decay, **kw)
    singles = [torch.nn.Parameter(w0[k].clone()) for k in range(K)]
    opts = [CLASSES[name]([singles[k]], lr=lrs[k], weight_decay=wds[k], decay=decay, **kw) for k in range(K)]
    for t, gr in enumerate(grads):
        s = 1.0 / (1 + t)  # a schedule, applied the way the engine applies it
        opt.param_groups[0]["lr"] = torch.tensor(lrs) * s
        stacked.grad = gr.clone()
        opt.step()
        for k in range(K):
            opts[k].param_groups[0]["lr"] = lrs[k] * s
            singles[k].grad = gr[k].clone()
            opts[k].step()
    for k in range(K):
        assert_close(stacked.detach()[k], singles[k].detach(), atol=1e-6, rtol=1e-6)


def test_independent_decay_measures_s_t_against_the_peak_of_one_cycle():
    """OneCycleLR's initial_lr is max_lr/div_factor: s_t is lr/max_lr (≤ 1, 1 at the peak), never lr/initial_lr (25)."""
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = optim.SGD([w], lr=0.1, weight_decay=0.1, decay="independent")
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=10, pct_start=0.3, div_factor=25.0)
    expected, peak = torch.ones(2, 2), 0.0
    for _ in range(10):
        s = opt.param_groups[0]["lr"] / 0.4
        peak = max(peak, s)
        w.grad = torch.zeros_like(w)
        opt.step()
        expected = expected * (1 - s * 0.1)
        assert_close(w.detach(), expected, atol=0, rtol=1e-6)
        sched.step()
    assert peak == pytest.approx(1.0)


def test_independent_decay_refuses_a_schedule_above_its_base_lr():
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = optim.SGD([w], lr=0.1, weight_decay=0.1, decay="independent")
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=2, cycle_momentum=False)
    w.grad = torch.zeros_like(w)
    opt.step()  # lr = base_lr = initial_lr: s_t = 1
    sched.step()
    with pytest.raises(ValueError, match=r"independent decay uses s_t = lr / base lr <= 1.*max_lr"):
        opt.step()  # lr rises above initial_lr: s_t > 1 would decay faster than λ per step
    # a warm-up below the base lr is fine, and decoupled decay has no base lr to exceed
    w2 = torch.nn.Parameter(torch.ones(2))
    opt2 = optim.SGD([w2], lr=0.1, weight_decay=0.1, decay="decoupled")
    sched2 = torch.optim.lr_scheduler.CyclicLR(opt2, base_lr=0.01, max_lr=0.1, step_size_up=2, cycle_momentum=False)
    for _ in range(2):
        w2.grad = torch.zeros(2)
        opt2.step()
        sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1)


def test_per_member_lr_refuses_torch_schedulers_clearly():
    w = torch.nn.Parameter(torch.ones(3, 2))
    opt = optim.SGD([w], lr=torch.tensor([0.1, 0.2, 0.3]), weight_decay=0.1, decay="coupled")
    with pytest.raises(ValueError, match=r"invalid lr: torch LR schedulers set one float lr per param group.*3 values"):
        torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    # after a state_dict round trip the groups still refuse (load_state_dict rebuilds them)
    opt.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match=r"per-member tensor"):
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    # a float lr still takes any scheduler
    torch.optim.lr_scheduler.StepLR(optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1), step_size=2)
