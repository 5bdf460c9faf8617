"""The article's claims, measured on a study's own records: the report's "Claims" section (docs/science.md).

(a) Plain SGD: coupled(λ) ≡ decoupled(λ) ≡ independent(η·λ). Shown on the study's own model: a few float64
    steps each way from the same initial weights, on a fixed random batch of small images (8×8: the same layers
    and weights, a fraction of the arithmetic); then the same with momentum 0.9,
    where coupled decay passes through the momentum buffer and the three part.
(b) Under Adam, L2's decay is divided by √v̂: per arm, at its best cell, the spread of the per-weight decay
    rate (90th / 10th percentile; 1 by definition for decoupled and independent decay) and the outcome the
    article predicts, the rank correlation between a channel's final weight norm and its mean √v̂ (higher
    under coupled decay if weights with a large gradient history are regularized less).
    The figure beside it: for one member of each such arm's best cell (its lowest seed), every decayed output
    channel's per-step decay rate at the peak learning rate against its mean √v̂, and its final weight norm
    against the same √v̂ (both relative to the tensor's median, since the correlation is taken within tensors).
(c) How many tensors decay (conv and linear weights) and how many never do (biases, normalization).
(d) Each arm's best error with its spread over seeds.
(e) The measured slope beside the prediction, with the regime: the angular update per step of the decayed
    weights against its equilibrium value (docs/science.md) at the middle epoch (a cosine schedule is at half
    its peak there; the equilibrium value follows the epoch's learning rate).

Everything here reads what the members recorded (final metrics and per-epoch histories on their MLflow runs),
except (a), which trains the model for a few steps on the CPU (1-4 s for resnet8 to resnet56 on 2 cores).
"""

from __future__ import annotations

import math
import os
import statistics

NEAR = 1.5   # mid-run angular update within this factor of its equilibrium value: "near equilibrium"


def sgd_identity(model: str, width: int = 1, steps: int = 5, lr: float = 0.1, weight_decay: float = 0.01,
                 batch: int = 8) -> list[dict]:
    """Per momentum (0, 0.9): the largest difference between the weights after `steps` float64 steps of
    coupled(λ) and decoupled(λ), and of decoupled(λ) and independent(η·λ), relative to the largest change of a
    weight over those steps (coupled). Plain SGD makes both rounding-level; momentum separates coupled."""
    import torch
    import torch.nn.functional as F

    from .models import build_model
    from .optim import build_optimizer, param_groups

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 8, 8, generator=gen, dtype=torch.float64)  # small images: the same model, fast
    y = torch.randint(0, 10, (batch,), generator=gen)
    out = []
    for momentum in (0.0, 0.9):
        final, start = {}, None
        for decay, lam in (("coupled", weight_decay), ("decoupled", weight_decay), ("independent", lr * weight_decay)):
            net = build_model(model, members=1, width=width, seeds=[0]).double()
            start = torch.cat([p.detach().flatten() for p in net.parameters()])
            groups, _ = param_groups(net.named_parameters(), lam, member_dims=1)
            opt = build_optimizer("sgd", groups, lr, decay, momentum=momentum)
            for _ in range(steps):
                opt.zero_grad()
                F.cross_entropy(net(x)[:, 0], y).backward()
                opt.step()
            final[decay] = torch.cat([p.detach().flatten() for p in net.parameters()])
        moved = float((final["coupled"] - start).abs().max())
        out.append({"momentum": momentum, "steps": steps, "lr": lr, "weight_decay": weight_decay, "moved": moved,
                    "coupled_vs_decoupled": float((final["coupled"] - final["decoupled"]).abs().max()) / moved,
                    "decoupled_vs_independent": float((final["decoupled"] - final["independent"]).abs().max()) / moved})
    return out


def cached_sgd_identity(model: str, width: int = 1) -> list[dict]:
    """sgd_identity, computed once per model, width, torch version and source of the model and optimizer code (the
    float64 steps took 3.7 of `study export`'s 17 s on a 2,000-member study, the same every time), kept as JSON
    in the decoded-data cache (datasets.cache_dir). A cache that cannot be read or written is passed by."""
    import hashlib
    import json
    from pathlib import Path

    import torch

    from .datasets import cache_dir

    here = Path(__file__).resolve().parent
    code = b"".join((here / f).read_bytes() for f in ("models.py", "optim.py", "registry.py", "claims.py"))
    key = hashlib.sha1(json.dumps([model, width, torch.__version__]).encode() + code).hexdigest()[:16]
    try:
        path = cache_dir() / f"sgd-identity-{key}.json"
    except RuntimeError:  # no home folder to find the cache in: computed every time
        return sgd_identity(model, width)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    out = sgd_identity(model, width)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(out))
        tmp.replace(path)  # whole or not at all: a reader never meets half a file
    except OSError:
        pass
    return out


def _mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and half-range of the finite values (NaN, NaN when none)."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return (statistics.fmean(v), (max(v) - min(v)) / 2) if v else (math.nan, math.nan)


def _ratio(details: list[dict]) -> float:
    """Mean over the members of angular update / its equilibrium at each one's middle epoch (NaN without one)."""
    ratios = []
    for d in details:
        upd, eq = d["history"].get("angular_update", {}), d["history"].get("angular_equilibrium", {})
        if not upd:
            continue
        mid = max(1, max(upd) // 2)
        u, e = upd.get(mid), eq.get(mid)
        if u is not None and e is not None and math.isfinite(u) and math.isfinite(e) and e > 0:
            ratios.append(u / e)
    return statistics.fmean(ratios) if ratios else math.nan


def _has_equilibrium(optimizer: str, decay: str) -> bool:
    """Whether docs/science.md states an equilibrium angular update for this update rule."""
    return optimizer == "sgd" or (optimizer == "adam" and decay in ("decoupled", "independent"))


def regime(ratio: float, why_none: str = "no equilibrium value stated for this update rule") -> str:
    """Words for the mid-run angular update against its equilibrium value (`why_none` where there is none)."""
    if not math.isfinite(ratio):
        return why_none
    if ratio < 1 / NEAR:
        return f"below equilibrium at mid-run (update {ratio:.2f}× its equilibrium value): still approaching it"
    if ratio > NEAR:
        return f"above equilibrium at mid-run ({ratio:.2f}× its equilibrium value)"
    return f"near equilibrium at mid-run ({ratio:.2f}× its equilibrium value)"


def arm_claims(land, cell: list[dict], details: list[dict]) -> dict:
    """(b)-(e) for one arm from its best cell's members (`cell`, as read_study gives them) and their recorded
    details (tracking.member_details)."""
    from .landscape import study_verdict

    finite = [m["error"] for m in cell if math.isfinite(m["error"])]
    err_mean, err_spread = _mean_spread(finite)
    spread = _mean_spread([d["final"].get("decay_spread", math.nan) for d in details])
    corr = _mean_spread([d["final"].get("norm_sqrt_v_corr", math.nan) for d in details])
    train_loss = _mean_spread([d["final"].get("train_loss", math.nan) for d in details])[0]
    tags = details[0]["tags"] if details else {}
    ratio = _ratio(details)
    lr, wd = (cell[0]["lr"], cell[0]["weight_decay"]) if cell else (land.best.get("lr"), land.best.get("weight_decay"))
    if not _has_equilibrium(land.optimizer, land.decay):
        why = "no equilibrium value stated for this update rule"
    elif wd == 0:
        why = "no decay at this cell (λ = 0): no equilibrium"
    else:
        why = "not recorded (diverged members, or runs recorded before the diagnostics)"
    verdict = study_verdict([land])["arms"][0]

    def count(key):
        v = tags.get(f"decay_counts.{key}")
        return int(v) if v is not None else None

    seeded = sorted(((m.get("seed", 0), d) for m, d in zip(cell, details) if d.get("channels")), key=lambda t: t[0])
    channels = {"seed": seeded[0][0], **seeded[0][1]["channels"]} if seeded else None
    return {"arm": land.arm, "lr": lr, "weight_decay": wd, "seeds": len(finite), "channels": channels,
            "optimizer": land.optimizer, "decay": land.decay,
            "error": err_mean, "error_spread": err_spread,
            "decay_spread": spread[0], "norm_sqrt_v_corr": corr[0], "norm_sqrt_v_corr_spread": corr[1],
            "decayed_tensors": count("decayed_tensors"), "no_decay_tensors": count("no_decay_tensors"),
            "predicted": land.predicted[1], "slope": land.slope, "slope_ci": list(land.slope_ci),
            "outcome": verdict["outcome"], "angular_ratio_mid": ratio, "regime": regime(ratio, why),
            "train_loss": train_loss}


def best_cell(land, members: list[dict]) -> list[dict]:
    """The members of an arm's best (seed-averaged) cell; for a sampler's interpolated landscape, its best
    member measured."""
    mine = [m for m in members if (m["optimizer"], m["decay"]) == (land.optimizer, land.decay)]
    lr, wd = land.best.get("lr"), land.best.get("weight_decay")
    cell = [m for m in mine if lr is not None and wd is not None
            and math.isclose(m["lr"], lr, rel_tol=1e-9) and math.isclose(m["weight_decay"], wd, rel_tol=1e-9)]
    if not cell and mine:
        cell = [min(mine, key=lambda m: m["error"] if math.isfinite(m["error"]) else math.inf)]
    return cell


def study_claims(uri: str, spec: dict, lands, members: list[dict]) -> dict:
    """The claims section's numbers: {"sgd": sgd_identity(...) (or {"error": …}, or None without a model),
    "arms": [arm_claims per arm]}."""
    from .registry import OPTIMIZERS
    from .tracking import member_details

    model = spec.get("model") or {}
    sgd = None
    if model.get("name"):
        try:
            sgd = cached_sgd_identity(model["name"], int(model.get("width") or 1))
        except (ValueError, RuntimeError) as e:  # a model this check cannot build: said, not a traceback
            sgd = {"error": f"{type(e).__name__}: {e}"}
    arms = []
    for land in lands:
        cell = best_cell(land, members)
        arms.append(arm_claims(land, cell, member_details(uri, [m["run_id"] for m in cell],
                                                          channels=getattr(OPTIMIZERS.get(land.optimizer), "preconditioned", False))))
    return {"sgd": sgd, "arms": arms}
