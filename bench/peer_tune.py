"""The peer of `study run`: the same study the way a typical Ray Tune user writes it (bench/peer.sh drives it).

One Tune trial per setting (arm, lr, weight_decay, seed): `tune.grid_search` over exactly the settings the
study trains (study.spec.grid_members), a plain nn.Module ResNet, torch.optim with the arm's weight decay the
usual way (coupled: `weight_decay=` of torch.optim.SGD/Adam/Adagrad on *all* parameters, batch-norm scales
and biases included; decoupled Adam: torch.optim.AdamW; what torch.optim has no option for is the usual
one-liner `p.mul_(1 - factor)` on all parameters before the step), a torch DataLoader with per-image
torchvision transforms over the same tensors (study.data.load_spec_data), a torch.optim.lr_scheduler stepped
per batch, per-epoch test evaluation and a checkpoint reported with tune.report, and
ray.air.integrations.mlflow.MLflowLoggerCallback writing to an absolute sqlite:/// store.

    peer_tune.py prepare SPEC OUT [--epochs N] [--tiny]   # OUT/spec.yaml: refine 0 (both sides train the same)
    peer_tune.py run SPEC OUT                             # the peer; OUT/results.json
    peer_tune.py compare SPEC OUT --peer-s S --study-s S --study-home HOME [--study-log LOG]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import yaml

LN = math.log


# --------------------------------------------------------------------------- prepare: the spec both sides run

def prepare(args) -> int:
    from study.data import load_spec_data
    from study.engine import pack_arrays
    from study.spec import SpecError, grid_members, load_spec, planned_members, read_spec_file

    src = Path(args.spec).resolve()
    raw = read_spec_file(src)
    raw.setdefault("name", src.stem)
    data = raw.setdefault("data", {})
    if data.get("path") is not None and not Path(os.path.expandvars(str(data["path"]))).expanduser().is_absolute():
        data["path"] = str((src.parent / os.path.expandvars(str(data["path"]))).resolve())  # relative to the spec
    search = raw.setdefault("search", {})
    refine = search.get("refine", 0)
    search["refine"] = 0  # no CLI override exists: refinement would add members the peer does not train
    train = raw.setdefault("train", {})
    if args.tiny:
        raw["name"] = f"{raw['name']}-tiny"
        data["train_subset"] = min(data.get("train_subset") or 10**9, 128)
        data["test_subset"] = min(data.get("test_subset") or 10**9, 120)
        train["epochs"] = 1
        train["warmup_epochs"] = 0
        for arm in raw.get("arms", []):
            arm["lr"]["points"] = 2
            arm["weight_decay"]["points"] = 2
        search["seeds"] = list(search.get("seeds") or [0])[:1]
        raw.pop("members", None)
    if args.epochs:
        train["epochs"] = int(args.epochs)
        if float(train.get("warmup_epochs", 0)) >= int(args.epochs):
            train["warmup_epochs"] = 0
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dst = out / "spec.yaml"
    dst.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = load_spec(dst)
    try:
        members = grid_members(spec)
    except SpecError as e:
        raise SpecError(f"{e} (the peer needs a grid study: its settings must be the study's)") from None
    for m in members:
        unsupported(m.optimizer, m.decay)
    if spec.model.name != "preact_resnet18" and not spec.model.name.startswith("resnet"):
        raise SpecError(f"invalid model.name: the peer has a plain CIFAR ResNet of depth 6n+2 only, "
                        f"but got name={spec.model.name!r}")
    if spec.model.name == "preact_resnet18":
        raise SpecError("invalid model.name: the peer has no plain preact_resnet18 (yet), but got name='preact_resnet18'")
    assert len(members) == planned_members(spec), (len(members), planned_members(spec))
    load_spec_data(spec.data)  # build the dataset cache now, so neither side's time includes it
    arrays = len(pack_arrays(members, spec.execution.members_per_trial))
    x = spec.execution
    print(f"spec {dst} (from {src}; search.refine {refine} -> 0): {len(members)} settings, "
          f"{spec.train.epochs} epoch(s), batch {spec.train.batch_size}, {spec.train.schedule}; "
          f"study run: {arrays} Tune trials (arrays of <= {x.members_per_trial}); peer: {len(members)} Tune trials; "
          f"{x.cpus_per_trial:g} CPU and {x.gpus_per_trial:g} GPU per trial, local Ray of {os.cpu_count()} CPUs"
          + (f", at most {x.max_concurrent} at a time" if x.max_concurrent else ""), flush=True)
    return 0


def unsupported(optimizer: str, decay: str) -> None:
    from study.spec import SpecError

    if optimizer not in ("sgd", "adam", "adagrad"):
        raise SpecError(f"invalid arms: the peer uses torch.optim, which has no {optimizer} here, "
                        f"but got optimizer={optimizer} (decay {decay})")


# --------------------------------------------------------------------------- the peer's trainable (Ray worker)

def make_optimizer(model, s: dict):
    """(optimizer, manual decay) for the setting `s`, the way a typical user writes it: torch.optim's own
    weight_decay (coupled; AdamW for decoupled Adam; AdamW with λ/lr for independent Adam) on all parameters,
    else (mode, λ) for a `p.mul_(1 - factor)` on all parameters before each step."""
    import torch

    params = list(model.parameters())
    opt, dec, lr, wd = s["optimizer"], s["decay"], s["lr"], s["weight_decay"]
    if opt == "sgd":
        kw = dict(lr=lr, momentum=s.get("momentum") or 0.0, nesterov=bool(s.get("nesterov")))
        if dec == "coupled":
            return torch.optim.SGD(params, weight_decay=wd, **kw), None
        return torch.optim.SGD(params, **kw), (dec, wd)  # torch.optim has no SGDW
    if opt == "adam":
        kw = dict(lr=lr, betas=tuple(s.get("betas") or (0.9, 0.999)), eps=s.get("eps") or 1e-8)
        if dec == "coupled":
            return torch.optim.Adam(params, weight_decay=wd, **kw), None
        if dec == "decoupled":
            return torch.optim.AdamW(params, weight_decay=wd, **kw), None
        return torch.optim.AdamW(params, weight_decay=wd / lr, **kw), None  # w·(1 − lr_t·λ/lr) = w·(1 − s_t·λ)
    if opt == "adagrad":
        kw = dict(lr=lr, eps=s.get("eps") or 1e-10)
        if dec == "coupled":
            return torch.optim.Adagrad(params, weight_decay=wd, **kw), None
        return torch.optim.Adagrad(params, **kw), (dec, wd)
    raise ValueError(f"invalid optimizer: {opt!r}")


def make_scheduler(opt, t, steps_per_epoch: int):
    """torch.optim.lr_scheduler for the spec's schedule, stepped once per batch: the same multiplier s_t as the
    study's at every step (linear warm-up (i+1)/w, then cosine over the rest, or step at the milestones)."""
    from torch.optim import lr_scheduler as ls

    total = t.epochs * steps_per_epoch
    warm = round(t.warmup_epochs * steps_per_epoch)
    if t.schedule == "cosine":
        main = ls.CosineAnnealingLR(opt, T_max=max(1, total - warm))
    elif t.schedule == "step":
        main = ls.MultiStepLR(opt, milestones=[max(0, math.ceil(q * total) - warm) for q in t.milestones], gamma=t.gamma)
    else:
        main = ls.ConstantLR(opt, factor=1.0, total_iters=0)
    if warm <= 0:
        return main
    start = ls.LinearLR(opt, start_factor=1.0 / warm, end_factor=1.0, total_iters=max(1, warm - 1))
    return ls.SequentialLR(opt, [start, main], milestones=[warm])


def train_one(config: dict, spec_dict: dict) -> None:
    """One setting, one model: the usual Tune function trainable."""
    import tempfile

    import torch
    import torch.nn.functional as F
    from ray import tune
    from torchvision.transforms import v2

    from study.bench import PlainResNet, UInt8Images
    from study.engine import resolve_eval_batch_size
    from study.data import load_spec_data
    from study.engine import resolve_channels_last, resolve_cudnn_benchmark, resolve_device, resolve_precision
    from study.spec import spec_from_dict

    spec = spec_from_dict(spec_dict)
    s, t = config["setting"], spec.train
    torch.set_num_threads(max(1, int(spec.execution.cpus_per_trial)))
    device = resolve_device(t.device)
    bf16, cl = resolve_precision(t.precision, device), resolve_channels_last(t.channels_last, device)
    fmt = torch.channels_last if cl else torch.contiguous_format
    torch.backends.cudnn.benchmark = resolve_cudnn_benchmark(t.cudnn_benchmark, device)  # as the study's arrays
    data = load_spec_data(spec.data)
    pad = spec.data.crop_padding if spec.data.crop_padding is not None else (4 if data.padded_crop else 0)
    flip = spec.data.flip if spec.data.flip is not None else data.padded_crop
    size = data.train_x.shape[-1]
    norm = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(data.mean, data.std)]
    train_tf = v2.Compose(([v2.RandomCrop(size, padding=pad)] if pad else []) + ([v2.RandomHorizontalFlip()] if flip else []) + norm)
    workers = int(os.environ.get("PEER_WORKERS", "0"))
    torch.manual_seed(s["seed"])  # the setting's seed: initial weights (and, as usual, the shuffling)
    batch = min(t.batch_size, len(data.train_y))
    train_loader = torch.utils.data.DataLoader(UInt8Images(data.train_x, data.train_y, train_tf), batch_size=batch,
                                               shuffle=True, drop_last=True, num_workers=workers)
    test_loader = torch.utils.data.DataLoader(UInt8Images(data.test_x, data.test_y, v2.Compose(norm)),
                                              batch_size=resolve_eval_batch_size(t.eval_batch_size, torch.device(device)),
                                              num_workers=workers)
    depth = int(spec.model.name.removeprefix("resnet"))
    model = PlainResNet(depth, data.num_classes, data.in_channels, spec.model.width, fan_out_init=True)
    model = model.to(device, memory_format=fmt)
    opt, manual = make_optimizer(model, s)
    sched = make_scheduler(opt, t, len(train_loader))
    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["epoch"]
    diverged = False
    for epoch in range(start, t.epochs):
        t0 = time.perf_counter()
        model.train()
        total, n = 0.0, 0
        for x, y in train_loader:
            x, y = x.to(device, memory_format=fmt), y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            if manual is not None:  # decay torch.optim has no option for: every parameter, before the step
                mode, wd = manual
                lr_now = opt.param_groups[0]["lr"]
                factor = lr_now * wd if mode == "decoupled" else (lr_now / s["lr"]) * wd
                with torch.no_grad():
                    for p in model.parameters():
                        p.mul_(1 - factor)
            opt.step()
            sched.step()
            total += loss.item()
            n += 1
        model.eval()
        test_loss, wrong = 0.0, 0
        with torch.no_grad():
            for x, y in test_loader:
                x, y = x.to(device, memory_format=fmt), y.to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(x).float()
                test_loss += F.cross_entropy(logits, y, reduction="sum").item()
                wrong += (logits.argmax(1) != y).sum().item()
        m = len(data.test_y)
        metrics = {"epoch": epoch + 1, "train_loss": total / max(1, n), "test_loss": test_loss / m,
                   "test_error": wrong / m, "epoch_time": time.perf_counter() - t0}
        diverged = diverged or not all(math.isfinite(v) for v in (metrics["train_loss"], metrics["test_loss"]))
        metrics["diverged"] = float(diverged)
        if os.environ.get("PEER_CHECKPOINT", "1") == "1":  # as the Tune tutorials do (and the study does)
            with tempfile.TemporaryDirectory() as d:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "epoch": epoch + 1}, Path(d) / "state.pt")
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)


# --------------------------------------------------------------------------- run: the driver

def setting(m) -> dict:
    return {"arm": m.arm, "optimizer": m.optimizer, "decay": m.decay, "lr": m.lr, "weight_decay": m.weight_decay,
            "seed": m.seed, **m.optimizer_kwargs()}


def run(args) -> int:
    import logging

    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    from study.spec import grid_members, load_spec, planned_members

    spec = load_spec(args.spec)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = [setting(m) for m in grid_members(spec)]
    assert len(settings) == planned_members(spec)
    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False,  # as `study run` starts it
             logging_level=logging.WARNING)
    cpus = ray.cluster_resources().get("CPU", 0)
    x = spec.execution
    gpus = x.gpus_per_trial
    if gpus and not ray.cluster_resources().get("GPU", 0):  # as `study run` does: train on CPUs, never wait for one
        print(f"peer: warning: execution.gpus_per_trial={gpus} but the Ray cluster has no GPU: training on CPUs",
              flush=True)
        gpus = 0.0
    uri = f"sqlite:///{out / 'mlflow.db'}"
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_one, spec_dict=spec.to_dict()),
                            {"cpu": x.cpus_per_trial, "gpu": gpus}),
        param_space={"setting": tune.grid_search(settings)},
        tune_config=tune.TuneConfig(max_concurrent_trials=x.max_concurrent),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=str(out / "ray_results"), verbose=1,
            callbacks=[MLflowLoggerCallback(tracking_uri=uri, experiment_name=spec.experiment)],
            failure_config=tune.FailureConfig(max_failures=x.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    grid = tuner.fit()
    fit_s = time.perf_counter() - t0
    rows, errors = [], []
    for r in grid:
        if r.error is not None:
            errors.append(f"{r.config['setting']}: {str(r.error).strip().splitlines()[-1][:200]}")
            continue
        mt = r.metrics or {}
        rows.append({**r.config["setting"], "epochs": mt.get("epoch"), "test_loss": mt.get("test_loss"),
                     "test_error": mt.get("test_error"), "train_loss": mt.get("train_loss"),
                     "diverged": bool(mt.get("diverged"))})
    (out / "results.json").write_text(json.dumps({"seconds": fit_s, "ray_cpus": cpus, "trials": len(grid),
                                                  "errors": errors, "members": rows, "mlflow": uri}, indent=1))
    print(f"peer: {len(rows)}/{len(settings)} trials finished, {len(errors)} failed, in {fit_s:.1f} s "
          f"(Ray start included) on a local Ray of {cpus:g} CPUs; MLflow {uri}", flush=True)
    for e in errors[:5]:
        print(f"  failed: {e}", file=sys.stderr)
    ray.shutdown()
    incomplete = [r for r in rows if r["epochs"] != spec.train.epochs]
    return 1 if errors or incomplete or len(rows) != len(settings) else 0


# --------------------------------------------------------------------------- compare

def _key(arm, lr, wd, seed) -> tuple:
    return (arm, float(f"{lr:.9g}"), float(f"{wd:.9g}"), int(seed))


def _fmt(v) -> str:
    return "   nan" if v is None or not math.isfinite(v) else f"{v:6.3f}"


def compare(args) -> int:
    from study.data import load_spec_data
    from study.engine import pack_arrays
    from study.spec import grid_axis, grid_members, load_spec
    from study.stores import default_tracking_uri
    from study.tracking import read_study

    spec = load_spec(args.spec)
    out = Path(args.out).resolve()
    classes = load_spec_data(spec.data).num_classes
    chance = math.log(classes)
    members = grid_members(spec)
    arrays = len(pack_arrays(members, spec.execution.members_per_trial))
    ratio = args.peer_s / args.study_s
    peer_json = json.loads((out / "peer" / "results.json").read_text())
    study_in = None
    if args.study_log and Path(args.study_log).is_file():
        import re
        found = re.findall(r"members recorded.* in (\d+) s", Path(args.study_log).read_text())
        study_in = float(found[-1]) if found else None
    print(f"\n== bench/peer.sh: {spec.name}, {len(members)} trainings × {spec.train.epochs} epoch(s) "
          f"({spec.model.name}, {spec.data.dataset}, batch {spec.train.batch_size}, {spec.train.schedule}; "
          f"{spec.execution.cpus_per_trial:g} CPU per trial, local Ray of {peer_json['ray_cpus']:g} CPUs)")
    print(f"peer (Ray Tune, one trial per setting): {len(members)} trials, {args.peer_s:.1f} s end to end "
          f"({peer_json['seconds']:.1f} s from ray.init to the last trial)")
    print(f"study run (member arrays):              {arrays} trials of <= {spec.execution.members_per_trial} members, "
          f"{args.study_s:.1f} s end to end" + (f" ({study_in:.0f} s training and records, before its export)"
                                               if study_in is not None else ""))
    print(f"wall-time ratio peer / study run: {ratio:.2f}x" + (" (study run is faster)" if ratio > 1 else " (the peer is faster)"))

    peer = {_key(r["arm"], r["lr"], r["weight_decay"], r["seed"]): r for r in peer_json["members"]}
    uri = default_tracking_uri(Path(args.study_home).resolve())
    study = {}
    for metric in ("test_loss", "test_error"):
        for r in read_study(uri, spec.name, metric)[3]:
            k = _key(f"{r['optimizer']}-{r['decay']}", r["lr"], r["weight_decay"], r["seed"])
            study.setdefault(k, {"diverged": r["diverged"]})[metric] = r["error"]
    missing = [k for k in (_key(m.arm, m.lr, m.weight_decay, m.seed) for m in members) if k not in peer or k not in study]
    print(f"landscapes: final test loss (chance: ln {classes} = {chance:.3f}) and error per setting, mean over seeds; "
          f"the peer decays every parameter (batch-norm scales and shifts, biases), the study conv and linear weights only")
    if missing:
        print(f"  {len(missing)} settings missing from a side, e.g. {missing[0]}")
    summary = {"spec": spec.name, "settings": len(members), "epochs": spec.train.epochs, "peer_s": args.peer_s,
               "study_s": args.study_s, "ratio": ratio, "arms": {}}

    def at_chance(r) -> bool:
        v = r.get("test_loss")
        return r.get("diverged") or v is None or not math.isfinite(v) or v >= chance - 0.05

    for arm in spec.arms:
        lrs, wds = grid_axis(arm.lr, spec.search.points), grid_axis(arm.weight_decay, spec.search.points)
        print(f"\n-- arm {arm.name}: rows lr, columns weight_decay; cells study | peer")
        stats = {}
        for side, recs in (("study", study), ("peer", peer)):
            rs = [recs[k] for k in recs if k[0] == arm.name]
            finite = [r["test_loss"] for r in rs if r.get("test_loss") is not None and math.isfinite(r["test_loss"]) and not r.get("diverged")]
            stats[side] = {"settings": len(rs), "at_chance": sum(at_chance(r) for r in rs),
                           "diverged": sum(bool(r.get("diverged")) for r in rs),
                           "best_test_loss": min(finite, default=math.nan),
                           "median_test_loss": statistics.median(finite) if finite else math.nan}
        for metric in ("test_loss", "test_error"):
            print(f"{metric:>10} " + " ".join(f"{wd:>15.3g}" for wd in wds))
            for lr in lrs:
                cells = []
                for wd in wds:
                    vals = []
                    for recs in (study, peer):
                        vs = [recs[k].get(metric) for seed in spec.search.seeds
                              if (k := _key(arm.name, lr, wd, seed)) in recs]
                        vs = [v for v in vs if v is not None and math.isfinite(v)]
                        vals.append(sum(vs) / len(vs) if vs else None)
                    cells.append(f"{_fmt(vals[0])} |{_fmt(vals[1])}")
                print(f"{lr:>10.3g} " + " ".join(f"{c:>15}" for c in cells))
        for side in ("study", "peer"):
            st = stats[side]
            print(f"  {side:<5}: {st['at_chance']}/{st['settings']} settings at chance or worse (test loss >= "
                  f"{chance - 0.05:.2f}, or diverged: {st['diverged']}); best test loss {st['best_test_loss']:.3f}, "
                  f"median {st['median_test_loss']:.3f}")
        summary["arms"][arm.name] = stats
    (out / "compare.json").write_text(json.dumps(summary, indent=1))
    return 1 if missing else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("spec")
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--tiny", action="store_true")
    p = sub.add_parser("run")
    p.add_argument("spec")
    p.add_argument("out")
    p = sub.add_parser("compare")
    p.add_argument("spec")
    p.add_argument("out")
    p.add_argument("--peer-s", type=float, required=True)
    p.add_argument("--study-s", type=float, required=True)
    p.add_argument("--study-home", required=True)
    p.add_argument("--study-log", default=None)
    args = ap.parse_args(argv)
    from study.spec import SpecError

    try:
        return {"prepare": prepare, "run": run, "compare": compare}[args.cmd](args)
    except SpecError as e:
        print(f"peer: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
