"""SGD, Adam and Adagrad with three weight-decay modes, for single models and member arrays.

Owns the update rules and the no-decay policy. Pure torch: imports no Ray, Optuna or MLflow.
One function, `_decay`, decides where weight decay enters; every optimizer calls it.

With η_t = lr (the group's current learning rate), η = base lr, s_t = η_t / η and λ = weight_decay:

    coupled      g ← g + λ·w, then the optimizer step on g      (torch.optim.SGD/Adam/Adagrad, weight_decay=λ)
    decoupled    w ← w·(1 − η_t·λ), then the step on g alone     (torch.optim.AdamW; SGDW as in timm/optax)
    independent  w ← w·(1 − s_t·λ), then the step on g alone     (Loshchilov & Hutter Alg. 1-2; Composer)

so decoupled(lr, λ) ≡ independent(lr, lr·λ) step for step. The base lr η is the group's
`initial_lr` when a torch LR scheduler set it, else the lr given at construction; it must be > 0.

Member arrays: a parameter whose dim 0 indexes K members may carry per-member hyperparameters. In a
param group, `lr` and `weight_decay` are then 1-D tensors of length K and apply to each member's slice
(`p[k]`); everywhere else they are Python floats. The update rules below are written once for both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

DECAY_MODES = ("coupled", "decoupled", "independent")


# --------------------------------------------------------------------------- hyperparameters

def _check_hp(name: str, value, *, allow_zero: bool = True) -> None:
    """Raise ValueError naming the argument when a float or per-member tensor is negative (or non-finite)."""
    if isinstance(value, Tensor):
        bad = ~torch.isfinite(value) | (value < 0 if allow_zero else value <= 0)
        if bool(bad.any()):
            raise ValueError(f"invalid {name}: every member's value must be {'>= 0' if allow_zero else '> 0'} "
                             f"and finite, but got {name}={value.tolist()}")
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"invalid {name}: expected a number, but got {name}={value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"invalid {name}: must be {'>= 0' if allow_zero else '> 0'}, but got {name}={value}")


def _check_decay(decay) -> None:
    if decay not in DECAY_MODES:
        raise ValueError(f"invalid decay: must be one of {', '.join(DECAY_MODES)}, but got decay={decay!r}")


def _as_member_tensor(value, name: str):
    """Floats stay floats; lists/tensors become float32 1-D tensors (one value per member)."""
    if isinstance(value, (list, tuple)):
        value = torch.tensor(value, dtype=torch.float32)
    if isinstance(value, Tensor):
        if value.ndim != 1 or value.numel() == 0:
            raise ValueError(f"invalid {name}: a per-member value must be a non-empty 1-D tensor, "
                             f"but got shape {tuple(value.shape)}")
        return value.detach().clone().float()
    return value


def _bcast(value, p: Tensor):
    """A float, or a per-member tensor viewed to broadcast over p's trailing dims."""
    if isinstance(value, Tensor):
        if p.shape[0] != value.shape[0]:
            raise ValueError(f"a per-member hyperparameter has {value.shape[0]} values but the parameter's "
                             f"dim 0 has {p.shape[0]} members (shape {tuple(p.shape)})")
        return value.to(device=p.device, dtype=p.dtype).view(-1, *([1] * (p.ndim - 1)))
    return value


def _is_zero(value) -> bool:
    return (not isinstance(value, Tensor)) and value == 0


# --------------------------------------------------------------------------- the decay, in one place

def _decay(p: Tensor, grad: Tensor, group: dict) -> Tensor:
    """Apply the group's weight decay to p (in place) or to the gradient; return the gradient to step on.

    coupled: returns g + λ·w.  decoupled: w ← w·(1 − lr·λ).  independent: w ← w·(1 − (lr/base_lr)·λ).
    Runs before the optimizer's own step, so the first step decays the pre-step weights.
    """
    wd = group["weight_decay"]
    if _is_zero(wd):
        return grad
    decay = group["decay"]
    lam = _bcast(wd, p)
    if decay == "coupled":
        return grad.add(p * lam) if isinstance(lam, Tensor) else grad.add(p, alpha=lam)
    lr = _bcast(group["lr"], p)
    if decay == "decoupled":
        factor = 1 - lr * lam
    else:  # independent: follows the schedule s_t = lr / base lr, never the lr's size
        base = group.get("initial_lr", group["base_lr"])
        factor = 1 - (lr / _bcast(base, p)) * lam
    p.mul_(factor)
    return grad


class _DecayOptimizer(torch.optim.Optimizer):
    """Shared construction and checks; subclasses implement `_update(p, grad, state, group)`."""

    def __init__(self, params, defaults: dict):
        _check_decay(defaults["decay"])
        for name in ("lr", "weight_decay"):
            defaults[name] = _as_member_tensor(defaults[name], name)
            _check_hp(name, defaults[name])
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        for name in ("lr", "weight_decay"):
            if name in param_group:
                param_group[name] = _as_member_tensor(param_group[name], name)
                _check_hp(name, param_group[name])
        if "decay" in param_group:
            _check_decay(param_group["decay"])
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("base_lr", group["lr"].clone() if isinstance(group["lr"], Tensor) else group["lr"])
        if group["decay"] == "independent" and not _is_zero(group["weight_decay"]):
            _check_hp("lr", group["base_lr"], allow_zero=False)  # s_t = lr / base lr needs base lr > 0

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                grad = _decay(p, p.grad, group)
                self._update(p, grad, self.state[p], group)
        return loss

    def _update(self, p: Tensor, grad: Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


class SGD(_DecayOptimizer):
    """SGD with momentum/Nesterov; matches torch.optim.SGD (dampening 0) when decay='coupled'."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, decay="coupled", nesterov=False):
        _check_hp("momentum", momentum)
        if nesterov and momentum <= 0:
            raise ValueError(f"invalid nesterov: Nesterov momentum needs momentum > 0, but got momentum={momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, decay=decay,
                                      nesterov=nesterov))

    def _update(self, p, grad, state, group):
        momentum = group["momentum"]
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = torch.clone(grad).detach()
            else:
                buf.mul_(momentum).add_(grad)
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        lr = _bcast(group["lr"], p)
        if isinstance(lr, Tensor):
            p.sub_(grad * lr)
        else:
            p.add_(grad, alpha=-lr)


class Adam(_DecayOptimizer):
    """Adam; matches torch.optim.Adam when decay='coupled' and torch.optim.AdamW when decay='decoupled'."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decay="coupled"):
        betas = tuple(betas)
        for i, b in enumerate(betas):
            if not isinstance(b, (int, float)) or not 0.0 <= b < 1.0:
                raise ValueError(f"invalid betas: betas[{i}] must lie in [0, 1), but got betas={betas}")
        if len(betas) != 2:
            raise ValueError(f"invalid betas: expected two values, but got betas={betas}")
        _check_hp("eps", eps)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decay=decay))

    def _update(self, p, grad, state, group):
        beta1, beta2 = group["betas"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** state["step"]
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** state["step"])
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
        lr = _bcast(group["lr"], p)
        if isinstance(lr, Tensor):
            p.sub_(exp_avg / denom * (lr / bias_correction1))
        else:
            p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


class Adagrad(_DecayOptimizer):
    """Adagrad (no lr decay, zero initial accumulator); matches torch.optim.Adagrad when decay='coupled'."""

    def __init__(self, params, lr=1e-2, eps=1e-10, weight_decay=0.0, decay="coupled"):
        _check_hp("eps", eps)
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, decay=decay))

    def _update(self, p, grad, state, group):
        if not state:
            state["step"] = 0
            state["sum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        state["sum"].addcmul_(grad, grad, value=1)
        std = state["sum"].sqrt().add_(group["eps"])
        lr = _bcast(group["lr"], p)
        if isinstance(lr, Tensor):
            p.sub_(grad / std * lr)
        else:
            p.addcdiv_(grad, std, value=-lr)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adagrad": Adagrad}


# --------------------------------------------------------------------------- which tensors decay

def param_groups(named_params: Iterable[tuple[str, Tensor]], weight_decay, member_dims: int = 0):
    """Split parameters into a decayed group and a never-decayed group, by shape alone.

    A tensor decays iff its per-member ndim (p.ndim − member_dims) is ≥ 2: conv and linear weights.
    Biases and normalization scales/shifts (per-member ndim ≤ 1) never decay. Returns
    (groups, counts) where counts = {"decayed_tensors", "no_decay_tensors", "decayed_params", "no_decay_params"}
    and params counts are per member.
    """
    decayed, plain = [], []
    for _, p in named_params:
        if not p.requires_grad:
            continue
        (decayed if p.ndim - member_dims >= 2 else plain).append(p)
    zero = torch.zeros_like(weight_decay) if isinstance(weight_decay, Tensor) else 0.0
    groups = [g for g in ({"params": decayed, "weight_decay": weight_decay},
                          {"params": plain, "weight_decay": zero}) if g["params"]]

    def per_member(ps):
        return sum(p.numel() // (p.shape[0] if member_dims else 1) for p in ps)

    counts = {"decayed_tensors": len(decayed), "no_decay_tensors": len(plain),
              "decayed_params": per_member(decayed), "no_decay_params": per_member(plain)}
    return groups, counts


def build_optimizer(name: str, groups, lr, decay: str, **kwargs) -> _DecayOptimizer:
    """The optimizer `name` ("sgd", "adam", "adagrad") over `groups` from `param_groups`."""
    if name not in OPTIMIZERS:
        raise ValueError(f"invalid optimizer: must be one of {', '.join(OPTIMIZERS)}, but got optimizer={name!r}")
    return OPTIMIZERS[name](groups, lr=lr, decay=decay, **kwargs)
