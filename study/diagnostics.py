"""Why a landscape looks the way it does: per-weight decay diagnostics, read at an epoch's end.

Owns the measurements of docs/science.md "Why L2 is not weight decay under Adam" and "Equilibrium". Pure torch:
imports no Ray, Optuna or MLflow. Nothing here runs inside the training step; the engine calls it once per epoch
on the array's weights and optimizer state, every function batched over the K members (dim 0).

- The per-weight decay rate: the fraction of a weight the decay term removes in one step. Decoupled decay
  removes η_t·λ, independent decay s_t·λ, coupled L2 under SGD η_t·λ: the same for every weight. Coupled L2 under
  Adam, Adagrad or RMSprop passes through the preconditioner, so weight i loses η_t·λ/(√v̂_i + ε): weights with a large
  gradient history are decayed less. `decay_spread` is the ratio of the 90th to the 10th percentile of that rate
  over a member's decayed weights: 1 by definition where the rate is uniform.
- The article's claim as an outcome that could fail: within every decayed tensor, its output channels' weight
  norms against their mean √v̂ over training (`channel_sqrt_v`, accumulated epoch by epoch), as a Spearman rank
  correlation per member, averaged over tensors (`norm_vs_sqrt_v`). Coupled L2 predicts channels with a larger
  √v̂ keep larger weights (a higher correlation than decoupled decay at the same setting). At the run's last
  epoch the per-channel values themselves (`channel_records`) go to each member's records, for the figure.
- The equilibrium angular update per step (`equilibrium_angle`) that the measured angular update is compared
  with, and the output layer's weight norm, which no batch norm follows (so its scale is not invariant).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .registry import OPTIMIZERS

PERCENTILES = (0.10, 0.90)


def has_preconditioner(optimizer: str) -> bool:
    """Whether the optimizer divides by a per-weight second moment (and so the diagnostics of √v̂ apply)."""
    return OPTIMIZERS[optimizer].preconditioned


def sqrt_second_moment(optimizer: str, state: dict, options: dict) -> Tensor | None:
    """√v̂ of one parameter, as the optimizer's step divides by it (its class's `preconditioner`, from its state and
    its settings `options`): Adam's bias-corrected √(v / (1 − β₂ᵗ)), Adagrad's √G, RMSprop's √(mean of g²); None
    before the first step or for an optimizer without one."""
    if not has_preconditioner(optimizer):
        return None
    return OPTIMIZERS[optimizer].load().preconditioner(state, options)


def decay_rates(optimizer: str, decay: str, rate: Tensor, state: dict, options: dict) -> Tensor:
    """The per-weight decay rate of one (K, ...) parameter, flattened to (K, n) or (K, 1) where it is uniform.

    `rate` (K,) is the decay term's uniform factor: η_t·λ for coupled and decoupled decay, s_t·λ for independent.
    Coupled decay under an optimizer with a preconditioner divides it by √v̂ + ε per weight (ε of `options`)."""
    if decay == "coupled" and has_preconditioner(optimizer):
        root = sqrt_second_moment(optimizer, state, options)
        if root is None:
            return torch.full((rate.shape[0], 1), math.nan, device=rate.device)
        return rate.float()[:, None] / (root.flatten(1) + options.get("eps", 0.0))
    return rate.float()[:, None]


def _nearest_rank(x: Tensor, q: float) -> Tensor:
    """The q-quantile of each row of x (K, n), nearest rank (no size limit, unlike torch.quantile)."""
    n = x.shape[1]
    k = min(n, max(1, math.ceil(q * n)))
    return x.kthvalue(k, dim=1).values


def decay_spread(rates: list[Tensor]) -> Tensor:
    """(K,) ratio of the 90th to the 10th percentile of the per-weight decay rate over all decayed weights.

    Member by member, so that no more than one member's rates are held at once. NaN where a member's rates are
    not all finite and positive (no decay, or a member that diverged)."""
    out = []
    for k in range(rates[0].shape[0]):
        full = torch.cat([r[k] for r in rates])
        lo, hi = (_nearest_rank(full[None], q)[0] for q in PERCENTILES)
        good = bool(torch.isfinite(full).all()) and float(lo) > 0
        out.append(hi / lo if good else torch.full_like(hi, math.nan))
    return torch.stack(out)


def channel_sqrt_v(optimizer: str, state: dict, options: dict) -> Tensor | None:
    """(K, cout): each output channel's mean √v̂ over its weights, for one (K, cout, ...) parameter."""
    root = sqrt_second_moment(optimizer, state, options)
    return None if root is None else root.flatten(2).mean(2)


def channel_norms(weight: Tensor) -> Tensor:
    """(K, cout): the norm of each output channel's weights of one (K, cout, ...) parameter."""
    return weight.detach().float().flatten(2).norm(dim=2)


def _average_ranks(x: Tensor) -> Tensor:
    """Ranks of each row of x (K, n), 0-based, ties given their average rank (scipy.stats.rankdata's default)."""
    order = x.argsort(dim=1, stable=True)
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks.scatter_(1, order, torch.arange(x.shape[1], dtype=torch.float64, device=x.device).expand_as(x).contiguous())
    sorted_x = x.gather(1, order)
    for k in range(x.shape[0]):  # ties: runs of equal values share the mean of their positions
        values, counts = torch.unique_consecutive(sorted_x[k], return_counts=True)
        if len(values) == x.shape[1]:
            continue
        ends = counts.cumsum(0)
        mean_rank = (ends - 1 + ends - counts).double() / 2
        ranks[k, order[k]] = mean_rank.repeat_interleave(counts)
    return ranks


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rank correlation of each row of a and b (K, n): the Pearson correlation of their ranks,
    ties given average ranks. NaN where a row has fewer than 3 entries, no spread, or a non-finite value."""
    if a.shape[1] < 3:
        return torch.full((a.shape[0],), math.nan, device=a.device)
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (ra.pow(2).sum(1) * rb.pow(2).sum(1)).sqrt()
    good = torch.isfinite(a).all(1) & torch.isfinite(b).all(1) & (den > 0)
    return torch.where(good, (ra * rb).sum(1) / den.clamp_min(1e-300), torch.full_like(den, math.nan)).float()


def norm_vs_sqrt_v(weights: list[Tensor], mean_sqrt_v: list[Tensor]) -> Tensor:
    """(K,) the claim's outcome: within each decayed tensor, the rank correlation of its output channels'
    weight norms with their mean √v̂ over training; the mean over tensors with at least 3 channels. Within a
    tensor only: layers differ in both norm and √v̂ by construction, and pooling them would measure that."""
    per_tensor = [rank_correlation(channel_norms(w), v) for w, v in zip(weights, mean_sqrt_v) if w.shape[1] >= 3]
    if not per_tensor:
        return torch.full((weights[0].shape[0],), math.nan, device=weights[0].device)
    return torch.stack(per_tensor).mean(0)


def channel_records(weights: list[Tensor], mean_sqrt_v: list[Tensor], digits: int = 6) -> list[dict]:
    """Per member, what the claims' figure draws (study/claims.py): for every decayed tensor its output channels'
    final weight norms and mean √v̂ over training, to `digits` significant digits (a few kB per member)."""
    norms = [channel_norms(w).cpu() for w in weights]
    roots = [v.float().cpu() for v in mean_sqrt_v]
    cut = lambda t: [float(f"{x:.{digits}g}") for x in t.tolist()]  # noqa: E731
    return [{"norm": [cut(n[k]) for n in norms], "sqrt_v": [cut(v[k]) for v in roots]}
            for k in range(weights[0].shape[0])]


def equilibrium_angle(optimizer: str, decay: str, lr_now: Tensor, s: float, weight_decay: Tensor,
                      momentum: float = 0.0, beta1: float = 0.9, nesterov: bool = False) -> Tensor:
    """(K,) the angular update per step of scale-invariant weights at rotational equilibrium (Kosson et al.).

    With r the decay term's rate per step (η_t·λ coupled and decoupled, s_t·λ independent) and β the momentum
    (μ for SGD, β₁ for Adam): √(2r/(1 + μ)) for SGD with coupled L2, whose decay passes through the momentum
    buffer; √(2r·(1 − β)/(1 + β)) for decoupled and independent decay, which does not (SGD and Adam alike).
    tests/test_diagnostics.py checks both against a random walk of a scale-invariant weight. NaN where no law is
    stated: coupled L2 under Adam, Adagrad or RMSprop (the rate differs per weight), Nesterov momentum, Adagrad,
    RMSprop and Lion."""
    rate = (weight_decay * s if decay == "independent" else lr_now * weight_decay).float()
    if optimizer == "sgd" and not nesterov:
        if decay == "coupled":
            return (2 * rate / (1 + momentum)).sqrt()
        return (2 * rate * (1 - momentum) / (1 + momentum)).sqrt()
    if optimizer == "adam" and decay != "coupled":
        return (2 * rate * (1 - beta1) / (1 + beta1)).sqrt()
    return torch.full_like(rate, math.nan)
