"""Why a landscape looks the way it does: per-weight decay diagnostics, read at an epoch's end.

Owns the measurements of docs/science.md "Why L2 is not weight decay under Adam" and "Equilibrium". Pure torch:
imports no Ray, Optuna or MLflow. Nothing here runs inside the training step; the engine calls it once per epoch
on the array's weights and optimizer state, every function batched over the K members (dim 0).

- The per-weight decay rate: the fraction of a weight the decay term removes in one step. Decoupled decay
  removes η_t·λ, independent decay s_t·λ, coupled L2 under SGD η_t·λ: the same for every weight. Coupled L2 under
  Adam or Adagrad passes through the preconditioner, so weight i loses η_t·λ/(√v̂_i + ε): weights with a large
  gradient history are decayed less. `decay_spread` is the ratio of the 90th to the 10th percentile of that rate
  over a member's decayed weights: 1 by definition where the rate is uniform.
- The article's claim as an outcome that could fail: per output channel of every decayed tensor, the final
  weight norm against the channel's mean √v̂ over training (`channel_sqrt_v`, accumulated epoch by epoch), as a
  Spearman rank correlation per member (`rank_correlation`). Coupled L2 predicts channels with a larger √v̂ keep
  larger weights (a higher correlation than decoupled decay at the same setting).
- The equilibrium angular update per step (`equilibrium_angle`) that the measured angular update is compared
  with, and the output layer's weight norm, which no batch norm follows (so its scale is not invariant).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# the optimizer state holding each optimizer's second moment (√ of it is the preconditioner's denominator)
SECOND_MOMENT = {"adam": "exp_avg_sq", "adagrad": "sum"}
PERCENTILES = (0.10, 0.90)


def has_preconditioner(optimizer: str) -> bool:
    """Whether the optimizer divides by a per-weight second moment (and so the diagnostics of √v̂ apply)."""
    return optimizer in SECOND_MOMENT


def sqrt_second_moment(optimizer: str, state: dict, betas=None) -> Tensor | None:
    """√v̂ of one parameter, as the optimizer's step divides by it: Adam's bias-corrected √(v / (1 − β₂ᵗ)),
    Adagrad's √G; None before the first step or for an optimizer without one."""
    key = SECOND_MOMENT.get(optimizer)
    if key is None or key not in state or not state.get("step"):
        return None
    v = state[key].detach().float()
    if optimizer == "adam":
        return (v / (1 - betas[1] ** int(state["step"]))).sqrt()
    return v.sqrt()


def decay_rates(optimizer: str, decay: str, rate: Tensor, state: dict, eps: float = 0.0, betas=None) -> Tensor:
    """The per-weight decay rate of one (K, ...) parameter, flattened to (K, n) or (K, 1) where it is uniform.

    `rate` (K,) is the decay term's uniform factor: η_t·λ for coupled and decoupled decay, s_t·λ for independent.
    Coupled decay under an optimizer with a preconditioner divides it by √v̂ + ε per weight."""
    if decay == "coupled" and has_preconditioner(optimizer):
        root = sqrt_second_moment(optimizer, state, betas)
        if root is None:
            return torch.full((rate.shape[0], 1), math.nan, device=rate.device)
        return rate.float()[:, None] / (root.flatten(1) + eps)
    return rate.float()[:, None]


def _nearest_rank(x: Tensor, q: float) -> Tensor:
    """The q-quantile of each row of x (K, n), nearest rank (no size limit, unlike torch.quantile)."""
    n = x.shape[1]
    k = min(n, max(1, math.ceil(q * n)))
    return x.kthvalue(k, dim=1).values


def decay_spread(rates: list[Tensor]) -> Tensor:
    """(K,) ratio of the 90th to the 10th percentile of the per-weight decay rate over all decayed weights.

    NaN where a member's rates are not all finite and positive (no decay, or a diverged member)."""
    full = torch.cat(rates, 1)  # one array shares its optimizer and decay: all uniform, or all per weight
    lo, hi = (_nearest_rank(full, q) for q in PERCENTILES)
    good = torch.isfinite(full).all(1) & (lo > 0)
    return torch.where(good, hi / lo, torch.full_like(hi, math.nan))


def channel_sqrt_v(optimizer: str, state: dict, betas=None) -> Tensor | None:
    """(K, cout): each output channel's mean √v̂ over its weights, for one (K, cout, ...) parameter."""
    root = sqrt_second_moment(optimizer, state, betas)
    return None if root is None else root.flatten(2).mean(2)


def channel_norms(weight: Tensor) -> Tensor:
    """(K, cout): the norm of each output channel's weights of one (K, cout, ...) parameter."""
    return weight.detach().float().flatten(2).norm(dim=2)


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rank correlation of each row of a and b (K, n): the Pearson correlation of their ranks
    (ties broken by position; the inputs are continuous). NaN where a row has fewer than 3 entries or no spread."""
    if a.shape[1] < 3:
        return torch.full((a.shape[0],), math.nan, device=a.device)

    def ranks(x):
        return x.argsort(dim=1).argsort(dim=1).double()

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (ra.pow(2).sum(1) * rb.pow(2).sum(1)).sqrt()
    spread = (a.amax(1) > a.amin(1)) & (b.amax(1) > b.amin(1))
    good = torch.isfinite(a).all(1) & torch.isfinite(b).all(1) & spread & (den > 0)
    return torch.where(good, (ra * rb).sum(1) / den.clamp_min(1e-300), torch.full_like(den, math.nan)).float()


def equilibrium_angle(optimizer: str, decay: str, lr_now: Tensor, s: float, weight_decay: Tensor,
                      momentum: float = 0.0) -> Tensor:
    """(K,) the angular update per step of scale-invariant weights at rotational equilibrium (Kosson et al.).

    With r the decay term's rate per step (η_t·λ coupled and decoupled, s_t·λ independent): √(2r) for Adam
    decoupled and independent, √(2r/(1 + μ)) for SGD with momentum μ (derived for coupled L2; for decoupled and
    independent SGD the same expression with their own rate, exact at μ = 0). NaN where no law is stated:
    coupled L2 under Adam or Adagrad (the rate differs per weight) and Adagrad or Lion otherwise."""
    rate = (weight_decay * s if decay == "independent" else lr_now * weight_decay).float()
    if optimizer == "sgd":
        return (2 * rate / (1 + momentum)).sqrt()
    if optimizer == "adam" and decay != "coupled":
        return (2 * rate).sqrt()
    return torch.full_like(rate, math.nan)
