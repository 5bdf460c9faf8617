"""Lion, added through the registry (one entry in study/registry.py, one class in study/optim.py), checked step
for step against the reference implementation `lion_pytorch.Lion`, in the three decay modes."""

import copy
import math

import pytest
import torch
from lion_pytorch import Lion as ReferenceLion
from torch.testing import assert_close

from study import optim
from study.registry import OPTIMIZERS
from study.spec import SpecError, spec_from_dict
from test_optim import STEPS, _problem, _train

LR, LAM = 1e-3, 0.3


def _cosine(opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / STEPS)))


@pytest.mark.parametrize("decay,reference_kw", [("decoupled", {}), ("independent", {"decoupled_weight_decay": True})])
def test_decoupled_and_independent_match_the_reference(decay, reference_kw):
    """lion_pytorch's weight_decay is w·(1 − lr·λ) (our decoupled); with decoupled_weight_decay it divides λ by the
    initial lr, w·(1 − s_t·λ) (our independent). Under a cosine schedule, so that the two differ."""
    net, data = _problem()
    net2 = copy.deepcopy(net)
    ours_opt = optim.Lion(net.parameters(), lr=LR, betas=(0.9, 0.99), weight_decay=LAM, decay=decay)
    ref_opt = ReferenceLion(net2.parameters(), lr=LR, betas=(0.9, 0.99), weight_decay=LAM, **reference_kw)
    ours = _train(net, ours_opt, data, _cosine(ours_opt))
    theirs = _train(net2, ref_opt, data, _cosine(ref_opt))
    for a, b in zip(ours, theirs):
        assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert not torch.equal(ours[0], _problem()[0][0].weight)


def test_coupled_is_the_reference_on_the_l2_gradient():
    """Coupled decay: the reference Lion without decay, stepping on g + λ·w."""
    net, data = _problem()
    net2 = copy.deepcopy(net)
    ours = _train(net, optim.Lion(net.parameters(), lr=LR, weight_decay=LAM, decay="coupled"), data)
    ref = ReferenceLion(net2.parameters(), lr=LR, weight_decay=0.0)
    for x, y in data:
        ref.zero_grad()
        torch.nn.functional.mse_loss(net2(x), y).backward()
        with torch.no_grad():
            for p in net2.parameters():
                p.grad.add_(p, alpha=LAM)
        ref.step()
    for a, b in zip(ours, net2.parameters()):
        assert_close(a, b.detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("decay", ["coupled", "decoupled", "independent"])
def test_member_array_equals_separate_optimizers(decay):
    """Stacked (K, …) parameters with per-member lr and λ step exactly as K separate Lion optimizers."""
    g = torch.Generator().manual_seed(1)
    K, lrs, lams = 3, [1e-3, 3e-3, 1e-2], [0.0, 0.1, 1.0]
    w = torch.randn(K, 4, 5, generator=g)
    grads = [torch.randn(K, 4, 5, generator=g) for _ in range(8)]
    stacked = torch.nn.Parameter(w.clone())
    opt = optim.Lion([{"params": [stacked]}], lr=torch.tensor(lrs), weight_decay=torch.tensor(lams), decay=decay)
    singles = [torch.nn.Parameter(w[k].clone()) for k in range(K)]
    opts = [optim.Lion([p], lr=lrs[k], weight_decay=lams[k], decay=decay) for k, p in enumerate(singles)]
    for gr in grads:
        stacked.grad = gr.clone()
        opt.step()
        for k, (p, o) in enumerate(zip(singles, opts)):
            p.grad = gr[k].clone()
            o.step()
    for k in range(K):
        assert_close(stacked.detach()[k], singles[k].detach(), atol=1e-7, rtol=1e-6)


def test_lion_is_one_registry_entry_with_its_own_settings():
    entry = OPTIMIZERS["lion"]
    assert entry.load() is optim.Lion and entry.option_names() == ("betas",)
    arm = {"optimizer": "lion", "decay": "decoupled", "lr": {"low": 1e-4, "high": 1e-3},
           "weight_decay": {"low": 0.1, "high": 1.0}}
    spec = spec_from_dict({"name": "lion", "arms": [arm]})
    assert spec.arms[0].name == "lion-decoupled"
    with pytest.raises(SpecError, match="takes no momentum"):
        spec_from_dict({"name": "lion", "arms": [{**arm, "momentum": 0.9}]})
