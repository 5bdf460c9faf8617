"""SGD, Adam, Adagrad, Lion and RMSprop with three weight-decay modes, for single models and member arrays.

Owns the update rules and the no-decay policy. Pure torch: imports no Ray, Optuna or MLflow.
One function, `_decay`, decides where weight decay enters; every optimizer calls it.

With η_t = lr (the group's current learning rate), η = base lr, s_t = η_t / η and λ = weight_decay:

    coupled      g ← g + λ·w, then the optimizer step on g      (torch.optim.SGD/Adam/Adagrad/RMSprop, weight_decay=λ)
    decoupled    w ← w·(1 − η_t·λ), then the step on g alone     (torch.optim.AdamW; SGDW as in timm/optax)
    independent  w ← w·(1 − s_t·λ), then the step on g alone     (Loshchilov & Hutter 2019; Composer)

so decoupled(lr, λ) ≡ independent(lr, lr·λ) step for step. s_t is the schedule multiplier, measured
against the *peak* lr: the base lr η is the group's `max_lr` when a scheduler set one (OneCycleLR,
whose `initial_lr` is only max_lr/div_factor), else its `initial_lr` (any other torch LR scheduler),
else the lr given at construction; it must be > 0. A float lr above that base (s_t > 1, e.g. CyclicLR)
is refused with an error rather than decaying faster than λ per step.

How `independent` relates to Loshchilov & Hutter's algorithms, in their symbols (α the base lr,
η_t the schedule multiplier, i.e. our s_t). Adam: Algorithm 2 (AdamW) exactly,
w_t = w_{t−1} − η_t·(α·m̂_t/(√v̂_t + ε) + λ·w_{t−1}). SGD with momentum: Algorithm 1 (SGDW) puts η_t
inside the momentum buffer, m_t = β·m_{t−1} + η_t·α·g_t and w_t = w_{t−1} − m_t − η_t·λ·w_{t−1}, so
each gradient keeps the lr it was taken with. This project, like torch.optim.SGD and Composer's
DecoupledSGDW, keeps m_t = β·m_{t−1} + g_t and scales the whole buffer by the current lr:
w_t = w_{t−1} − η_t·α·m_t − η_t·λ·w_{t−1}. The two agree for a constant lr and for momentum 0; while the
lr changes (warm-up, cosine or step decay) the buffer's past gradients are re-weighted by today's lr.

Member arrays: a parameter whose dim 0 indexes K members may carry per-member hyperparameters. In a
param group, `lr` and `weight_decay` are then 1-D tensors of length K and apply to each member's slice
(`p[k]`); everywhere else they are Python floats. The update rules below are written once for both.
Torch LR schedulers set one float lr per group: a group with a per-member lr refuses them with an error
(drive it by assigning `group["lr"]` each step, as study.engine does).

Flat groups (`"flat": True` in a param group, all parameters with the same member dim 0 = K): the
optimizer re-binds the group's parameters as views of one (K, P) buffer and their gradients as views of
another, each parameter keeping its memory layout inside its slot. Every update then runs once on the
whole buffer (a handful of kernels per group instead of several per tensor), and per-member reductions
(`member_grads_finite`) are one reduction. The arithmetic is the same elementwise, so results equal the
per-tensor path. Optimizer state is flat too, exposed per parameter (views) in `state` and state_dict(),
which round-trips exactly. zero_grad() zeroes the flat gradient in place (set_to_none does not apply).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
from torch import Tensor

from .registry import DECAY_MODES  # noqa: E402  (one home: the registry)

# the optimizer classes are named by their registry entries ("study.optim:Adam") and loaded from there
__all__ = ["SGD", "Adam", "Adagrad", "Lion", "RMSprop", "base_lr", "build_optimizer", "flat_backward", "param_groups"]


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
    """A float, or a per-member tensor viewed to broadcast over p's trailing dims (in p's dtype and device)."""
    if isinstance(value, Tensor):
        if p.shape[0] != value.shape[0]:
            raise ValueError(f"a per-member hyperparameter has {value.shape[0]} values but the parameter's "
                             f"dim 0 has {p.shape[0]} members (shape {tuple(p.shape)})")
        return value.to(device=p.device, dtype=p.dtype).view(-1, *([1] * (p.ndim - 1)))
    return value


def _cast(value, like: Tensor):
    """A float stays; a per-member tensor moves to like's dtype and device (a no-op when it is there)."""
    return value.to(device=like.device, dtype=like.dtype) if isinstance(value, Tensor) else value


def _is_zero(value) -> bool:
    return (not isinstance(value, Tensor)) and value == 0


class _Group(dict):
    """A param group. With a per-member (tensor) lr it refuses torch LR schedulers with a clear error:
    they keep one float lr per group, and would otherwise fail deep inside with a `fill_` error."""

    def _refuse(self, key):
        if key == "initial_lr" and isinstance(self.get("lr"), Tensor):
            raise ValueError(f"invalid lr: torch LR schedulers set one float lr per param group, but this group's "
                             f"lr is a per-member tensor of {self['lr'].numel()} values; schedule it by assigning "
                             f"group['lr'] = base_lrs * s_t each step (as study.engine does)")

    def setdefault(self, key, default=None):
        self._refuse(key)
        return super().setdefault(key, default)

    def __setitem__(self, key, value):
        self._refuse(key)
        super().__setitem__(key, value)


# --------------------------------------------------------------------------- the decay, in one place

def base_lr(group: dict):
    """The lr that s_t = lr / base lr is measured against: the peak of the schedule.

    OneCycleLR sets `initial_lr` to max_lr/div_factor (its starting lr) and `max_lr` to the peak: the peak
    is used. Other torch schedulers set `initial_lr` to the lr they started from, which is their peak.
    Without a scheduler it is the lr the group was built with."""
    if "max_lr" in group:
        return group["max_lr"]
    return group.get("initial_lr", group["base_lr"])


def _decay_factor(group: dict, like: Tensor):
    """The factor w is multiplied by this step (decoupled, independent), in like's dtype; None otherwise.

    decoupled: 1 − lr·λ.  independent: 1 − (lr / base lr)·λ, refusing a float s_t > 1.  Computed once per
    group and step: a float, or a per-member (K,) tensor."""
    wd, decay = group["weight_decay"], group["decay"]
    if _is_zero(wd) or decay == "coupled":
        return None
    lr, lam = _cast(group["lr"], like), _cast(wd, like)
    if decay == "decoupled":
        return 1 - lr * lam
    base = base_lr(group)
    s = lr / _cast(base, like)
    if not isinstance(s, Tensor) and s > 1 + 1e-6:
        raise ValueError(f"invalid lr schedule: independent decay uses s_t = lr / base lr <= 1 (the base is the "
                         f"schedule's peak), but got lr={lr:.6g} above base lr={base:.6g} (s_t={s:.4g}); a scheduler "
                         f"that raises the lr above the group's initial_lr must set group['max_lr'] to its peak")
    return 1 - s * lam


def _decay(p: Tensor, grad: Tensor, group: dict, factor=None, scratch: bool = False) -> Tensor:
    """Apply the group's weight decay to p (in place) or to the gradient; return the gradient to step on.

    coupled: returns g + λ·w.  decoupled: w ← w·(1 − lr·λ).  independent: w ← w·(1 − (lr/base_lr)·λ).
    Runs before the optimizer's own step, so the first step decays the pre-step weights. `factor` is
    _decay_factor(group, p), computed once per group (recomputed here when not given). `scratch`: grad
    may be overwritten (a flat group's gradient buffer, zeroed before the next backward).
    """
    wd = group["weight_decay"]
    if _is_zero(wd):
        return grad
    if group["decay"] == "coupled":
        lam = _bcast(wd, p)
        if isinstance(lam, Tensor):  # g + w·λ in one kernel (addcmul: g + 1·w·λ, the same rounding)
            return grad.addcmul_(p, lam) if scratch else torch.addcmul(grad, p, lam)
        return grad.add_(p, alpha=lam) if scratch else grad.add(p, alpha=lam)
    if factor is None:
        factor = _decay_factor(group, p)
    p.mul_(_bcast(factor, p))
    return grad


# --------------------------------------------------------------------------- flat groups

def _memory_order(p: Tensor) -> tuple[int, ...]:
    """The order of p's dims in memory, member dim 0 first (p.permute(order) is contiguous); p's logical
    order when p is not laid out densely with dim 0 outermost."""
    order = (0, *sorted(range(1, p.ndim), key=lambda d: -p.stride(d)))
    if p.ndim and p.permute(order).is_contiguous():
        return order
    return tuple(range(p.ndim))


class _FlatGroup:
    """The parameters of one group as views of one (K, P) buffer, their gradients as views of another.

    Slot i holds parameter i's K·n_i values, member-major, in the parameter's own memory order (a
    channels-last conv weight stays (cout, kh, kw, cin) inside each member's slot)."""

    def __init__(self, params: list[Tensor]):
        if not params:
            raise ValueError("a flat param group needs at least one parameter")
        p0 = params[0]
        K = p0.shape[0] if p0.ndim else 0
        for p in params:
            if p.ndim == 0 or p.shape[0] != K or p.dtype != p0.dtype or p.device != p0.device or p.is_sparse:
                raise ValueError(f"invalid flat param group: every parameter needs member dim 0 = {K}, dtype "
                                 f"{p0.dtype} and device {p0.device}, but got shape {tuple(p.shape)}, {p.dtype}, {p.device}")
        self.params, self.slots, offset = list(params), [], 0
        for p in params:
            order = _memory_order(p)
            n = p.numel() // K
            inverse = tuple(sorted(range(p.ndim), key=lambda d: order[d]))
            self.slots.append((offset, n, tuple(p.shape[d] for d in order), inverse))
            offset += n
        self.param = torch.empty(K, offset, dtype=p0.dtype, device=p0.device)
        self.grad = torch.zeros_like(self.param)
        with torch.no_grad():
            for i, p in enumerate(self.params):
                view = self.view(self.param, i)
                view.copy_(p)
                if p.grad is not None:
                    self.view(self.grad, i).copy_(p.grad)
                p.data = view
        self.grads = [self.view(self.grad, i) for i in range(len(self.params))]
        for p, g in zip(self.params, self.grads):
            p.grad = g
        self.state: dict = {}      # flat state: (K, P) tensors and scalars
        self.mirrored: tuple = ()  # state keys already exposed per parameter

    def view(self, flat: Tensor, i: int) -> Tensor:
        """Parameter i's slot of a (K, P) tensor, shaped and strided like the parameter."""
        offset, n, shape, inverse = self.slots[i]
        return flat[:, offset:offset + n].view(shape).permute(inverse)

    def bind_grads(self, keep: bool) -> None:
        """Point every p.grad back at its slot; with keep, a gradient assigned elsewhere is copied in first."""
        for p, g in zip(self.params, self.grads):
            if p.grad is not g:
                if keep:
                    if p.grad is None:
                        g.zero_()
                    else:
                        g.copy_(p.grad)
                p.grad = g

    def mirror(self, opt_state, full: bool = True) -> None:
        """Expose the flat state per parameter, as torch's state_dict() expects: views of the flat tensors
        (made once, `full`) and the scalars (step counts; refreshed every step)."""
        scalars = {k: v for k, v in self.state.items() if not isinstance(v, Tensor)}
        for i, p in enumerate(self.params):
            st = opt_state[p]
            if full:
                for key, value in self.state.items():
                    if isinstance(value, Tensor):
                        st[key] = self.view(value, i) if value.shape == self.param.shape else value
            st.update(scalars)
        if full:
            self.mirrored = tuple(self.state)

    def load(self, opt_state) -> None:
        """Rebuild the flat state from per-parameter state (after Optimizer.load_state_dict)."""
        per_param = [opt_state.get(p) or {} for p in self.params]
        self.state = {}
        for key, v0 in per_param[0].items():
            if isinstance(v0, Tensor) and v0.shape == self.params[0].shape:
                flat = torch.zeros_like(self.param)
                for i, st in enumerate(per_param):
                    self.view(flat, i).copy_(st[key])
                self.state[key] = flat
            elif key == "step" and isinstance(v0, Tensor):  # a device counter: this optimizer's own, on its device
                self.state[key] = v0.detach().to(device=self.param.device, dtype=torch.float64).clone()
            else:
                self.state[key] = v0
        self.mirror(opt_state)


def flat_backward():
    """Context for a backward that accumulates into flat groups: their member-major gradient slots are
    strided on purpose, so torch's gradient-layout check (a once-per-process warning) is relaxed."""
    policy = getattr(torch.autograd, "enforce_grad_layout_policy", None)
    return policy(False) if policy is not None else contextlib.nullcontext()


class _DecayOptimizer(torch.optim.Optimizer):
    """Shared construction and checks; subclasses implement `_update(p, grad, state, group)`."""

    def __init__(self, params, defaults: dict):
        _check_decay(defaults["decay"])
        for name in ("lr", "weight_decay"):
            defaults[name] = _as_member_tensor(defaults[name], name)
            _check_hp(name, defaults[name])
        defaults.setdefault("flat", False)
        self._flat: dict[int, _FlatGroup] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        param_group = _Group(param_group)
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
        if group["flat"]:
            self._flat[len(self.param_groups) - 1] = _FlatGroup(group["params"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            flat = self._flat.get(i)
            if flat is not None:
                flat.bind_grads(keep=True)
                grad = _decay(flat.param, flat.grad, group, scratch=True)
                self._update(flat.param, grad, flat.state, group)
                flat.mirror(self.state, full=tuple(flat.state) != flat.mirrored)
                continue
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            factor = _decay_factor(group, params[0])  # once per group: a float or a (K,) tensor
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                grad = _decay(p, p.grad, group, factor if p.dtype == params[0].dtype else None)
                self._update(p, grad, self.state[p], group)
        return loss

    def _update(self, p: Tensor, grad: Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError

    @staticmethod
    def preconditioner(state: dict, options: dict) -> Tensor | None:
        """√v̂ of one parameter as this optimizer's step divides by it (ε aside), read from its state and settings
        (study/diagnostics.py); None for an optimizer without a per-weight preconditioner, or before a step."""
        return None

    # ------------------------------------------------------------------ flat groups: gradients and state

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's zero_grad; a flat group's gradient is zeroed in place and stays bound to its buffer."""
        for i, group in enumerate(self.param_groups):
            flat = self._flat.get(i)
            if flat is not None:
                flat.grad.zero_()
                flat.bind_grads(keep=False)
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

    def count_steps_on_device(self) -> None:
        """Keep every step count as a float64 tensor on the parameters' device, counted in place, so that a step
        recorded once in a CUDA graph and replayed reads and advances the true count (a host number would be
        baked into the graph). Adam's bias corrections are then computed from it on the device: the same values
        in float32 as from the host number. Flat groups only (member arrays)."""
        for i, group in enumerate(self.param_groups):
            flat = self._flat.get(i)
            if flat is None:
                raise ValueError(f"invalid param group {i}: step counts on the device need flat groups (member arrays)")
            if "step" in flat.state and not isinstance(flat.state["step"], Tensor):
                flat.state["step"] = torch.tensor(float(flat.state["step"]), dtype=torch.float64, device=flat.param.device)
                for p in flat.params:  # the per-parameter view torch's state_dict() reads shares the counter
                    self.state[p]["step"] = flat.state["step"]

    def member_grads_finite(self) -> Tensor | None:
        """(K,) bool: member k's gradients are all finite (their sum is); one reduction per flat group.
        None when the optimizer has no flat group."""
        out = None
        for flat in self._flat.values():
            flat.bind_grads(keep=True)
            ok = torch.isfinite(flat.grad.sum(1))
            out = ok if out is None else out & ok
        return out

    def zero_member_grads_(self, alive: Tensor) -> None:
        """Zero the gradients of members where `alive` is False (NaN and inf included), in place.

        A multiplication by the 0/1 mask, then nan_to_num (0·inf and 0·NaN are NaN): two vectorized
        passes, several times cheaper than a masked fill with a broadcast boolean mask. A live member's
        gradients are all finite (member_grads_finite), so both leave them unchanged."""
        for flat in self._flat.values():
            flat.grad.mul_(alive.view(-1, 1).to(flat.grad.dtype)).nan_to_num_(0.0, 0.0, 0.0)

    def state_dict(self):
        for flat in self._flat.values():
            flat.mirror(self.state)  # scalars (step counts) too
        return super().state_dict()

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self.param_groups[:] = [g if isinstance(g, _Group) else _Group(g) for g in self.param_groups]
        for flat in self._flat.values():
            flat.load(self.state)


def _div_as_by_host_number(x: Tensor, d: Tensor) -> Tensor:
    """x / d for a 0-d float64 tensor d (a step count's bias correction kept on the device), rounded exactly as
    x / float(d) is: d is cast to x's dtype first, and on CUDA, which divides by a host number as a multiplication
    by its reciprocal in that dtype (PyTorch's div_true_kernel_cuda), the same multiplication is made. A float x
    (one lr for every member, outside the engine) gives a 0-d float64 tensor: equal to rounding, not bitwise."""
    if not isinstance(x, Tensor):
        return x / d
    d = d.to(x.dtype)
    return torch.mul(x, d.reciprocal()) if x.is_cuda else torch.div(x, d)


def _descend(p: Tensor, update: Tensor, lr) -> None:
    """p ← p − lr·update, lr a float or a per-member tensor broadcast to p (_bcast): one kernel, no temporary."""
    if isinstance(lr, Tensor):
        p.addcmul_(update, lr, value=-1)
    else:
        p.add_(update, alpha=-lr)


def _descend_div(p: Tensor, grad: Tensor, denom: Tensor, lr) -> None:
    """p ← p − lr·grad/denom; a per-member lr reuses denom's memory for the quotient (denom is a temporary)."""
    if isinstance(lr, Tensor):
        p.addcmul_(torch.div(grad, denom, out=denom), lr, value=-1)
    else:
        p.addcdiv_(grad, denom, value=-lr)


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
        _descend(p, grad, _bcast(group["lr"], p))


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
        state["step"] += 1          # in place when it is a device counter (count_steps_on_device)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** state["step"]   # float64: a float, or a 0-d tensor on the device
        bias_correction2 = 1 - beta2 ** state["step"]
        if isinstance(bias_correction2, Tensor):
            denom = _div_as_by_host_number(exp_avg_sq.sqrt(), bias_correction2.sqrt()).add_(group["eps"])
            lr = _div_as_by_host_number(_bcast(group["lr"], p), bias_correction1)
        else:
            denom = exp_avg_sq.sqrt().div_(math.sqrt(bias_correction2)).add_(group["eps"])
            lr = _bcast(group["lr"], p) / bias_correction1
        _descend_div(p, exp_avg, denom, lr)  # p − (m/denom)·(lr/bc1)


    @staticmethod
    def preconditioner(state, options):
        if not state.get("step"):
            return None
        return (state["exp_avg_sq"].detach().float() / (1 - options["betas"][1] ** int(state["step"]))).sqrt()


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
        _descend_div(p, grad, state["sum"].sqrt().add_(group["eps"]), _bcast(group["lr"], p))

    @staticmethod
    def preconditioner(state, options):
        return state["sum"].detach().float().sqrt() if state.get("step") else None


class Lion(_DecayOptimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the update is the sign of an
    interpolation of momentum and gradient, c = β1·m + (1 − β1)·g, p ← p − lr·sign(c), then m ← β2·m + (1 − β2)·g.
    Matches the reference `lion_pytorch.Lion`: decay='decoupled' is its weight_decay (w·(1 − lr·λ)),
    decay='independent' its decoupled_weight_decay=True (w·(1 − s_t·λ)); decay='coupled' adds λ·w to the
    gradient first (which the sign then mostly erases: coupled decay is nearly inert under Lion)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, decay="coupled"):
        betas = tuple(betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid betas: two values in [0, 1), but got betas={betas}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, decay=decay))

    def _update(self, p, grad, state, group):
        beta1, beta2 = group["betas"]
        if not state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        exp_avg = state["exp_avg"]
        _descend(p, exp_avg.mul(beta1).add_(grad, alpha=1 - beta1).sign_(), _bcast(group["lr"], p))
        exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)


class RMSprop(_DecayOptimizer):
    """RMSprop; matches torch.optim.RMSprop (its alpha, eps, momentum, centered) when decay='coupled'. Like
    Adam's, L2 passes through the division by √(running mean of g²): decoupled and independent decay do not."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, momentum=0.0, centered=False, weight_decay=0.0,
                 decay="coupled"):
        for name, value in (("alpha", alpha), ("momentum", momentum)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"invalid {name}: must lie in [0, 1), but got {name}={value}")
        _check_hp("eps", eps)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, centered=centered,
                                      weight_decay=weight_decay, decay=decay))

    def _update(self, p, grad, state, group):
        alpha, momentum = group["alpha"], group["momentum"]
        if not state:
            state["step"] = 0
            state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if momentum > 0:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["centered"]:
                state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        square_avg = state["square_avg"]
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        if group["centered"]:
            state["grad_avg"].lerp_(grad, 1 - alpha)
            avg = square_avg.addcmul(state["grad_avg"], state["grad_avg"], value=-1).sqrt_().add_(group["eps"])
        else:
            avg = square_avg.sqrt().add_(group["eps"])
        lr = _bcast(group["lr"], p)
        if momentum > 0:
            _descend(p, state["momentum_buffer"].mul_(momentum).addcdiv_(grad, avg), lr)
        else:
            _descend_div(p, grad, avg, lr)

    @staticmethod
    def preconditioner(state, options):
        if not state.get("step"):
            return None
        square_avg = state["square_avg"].detach().float()
        if options.get("centered"):
            grad_avg = state["grad_avg"].detach().float()
            return square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt()
        return square_avg.sqrt()


# --------------------------------------------------------------------------- which tensors decay

def param_groups(named_params: Iterable[tuple[str, Tensor]], weight_decay, member_dims: int = 0, flat: bool = False):
    """Split parameters into a decayed group and a never-decayed group, by shape alone.

    A tensor decays iff its per-member ndim (p.ndim − member_dims) is ≥ 2: conv and linear weights.
    Biases and normalization scales/shifts (per-member ndim ≤ 1) never decay (their group's weight_decay
    is 0.0, so no decay arithmetic runs for them). `flat` marks both groups flat (member arrays: one
    buffer per group, see the module docstring). Returns (groups, counts) where counts =
    {"decayed_tensors", "no_decay_tensors", "decayed_params", "no_decay_params"} and params counts are
    per member.
    """
    decayed, plain = [], []
    for _, p in named_params:
        if not p.requires_grad:
            continue
        (decayed if p.ndim - member_dims >= 2 else plain).append(p)
    groups = [g for g in ({"params": decayed, "weight_decay": weight_decay},
                          {"params": plain, "weight_decay": 0.0}) if g["params"]]
    if flat:
        for g in groups:
            g["flat"] = True

    def per_member(ps):
        return sum(p.numel() // (p.shape[0] if member_dims else 1) for p in ps)

    counts = {"decayed_tensors": len(decayed), "no_decay_tensors": len(plain),
              "decayed_params": per_member(decayed), "no_decay_params": per_member(plain)}
    return groups, counts


def build_optimizer(name: str, groups, lr, decay: str, **kwargs) -> _DecayOptimizer:
    """The optimizer `name` of study/registry.py over `groups` from `param_groups`; `kwargs` are its settings."""
    from .registry import OPTIMIZERS as ENTRIES

    if name not in ENTRIES:
        raise ValueError(f"invalid optimizer: must be one of {', '.join(ENTRIES)}, but got optimizer={name!r}")
    return ENTRIES[name].load()(groups, lr=lr, decay=decay, **kwargs)
