"""Helper of bench/gpu_check.sh: plans the landscape spec, prints the closing summary.

  gpu_check_report.py plan OUT_DIR --tiny|--gpu [--budget-s S]   writes OUT_DIR/landscape.yaml
  gpu_check_report.py summary OUT_DIR [--tiny]                    prints throughput, landscape, memory, failures
  gpu_check_report.py synccheck OUT_DIR --device cuda              training steps under set_sync_debug_mode("error")

The plan keeps bench/gpu_landscape.yaml (SGD coupled vs independent, 6 lr × 8 λ, 10 epochs, batch 512,
bf16 and channels-last) and, on the GPU, lowers the epochs only if the eager throughput measured just before
says 10 epochs would not fit the time left (it says so). --tiny shrinks it to a CPU rehearsal.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"k128_member_images_per_s": 300_000, "k1_images_per_s": 25_000, "k128_vs_plain": 20.0,
           "coupled_slope_max": -0.6, "independent_slope_range": (-0.4, 0.4), "best_error_gap": 0.01}


COMPILE_S = 60  # the landscape's first compiled step, set aside from its budget (an H100 compiled K = 1 and
#               K = 128 in 26 and 29 s: results/2026-11-27/h100_bench_compiled.json; about twice that, to be safe)


def plan(out: Path, tiny: bool, budget_s: float) -> None:
    spec = yaml.safe_load((ROOT / "bench" / "gpu_landscape.yaml").read_text())
    spec["train"].update(precision="bf16", channels_last=True, cudnn_benchmark=True)
    if tiny:
        spec["name"] = "gpu_landscape_tiny"
        spec["data"].update(train_subset=512, test_subset=256)
        spec["train"].update(epochs=1, device="cpu", batch_size=64, warmup_epochs=0)
        for arm in spec["arms"]:
            arm["lr"]["points"], arm["weight_decay"]["points"] = 2, 3
        spec["execution"]["members_per_trial"] = 6
        print("landscape plan (tiny): 512 train / 256 test images, 1 epoch, 2 lr × 3 λ per arm, batch 64")
    else:
        epochs = spec["train"]["epochs"]
        bench, near = out / "bench_eager.json", None
        if bench.is_file():  # time per epoch of both arms (48 members each) from the eager throughput nearest K=48
            rows = [r for r in json.loads(bench.read_text())["rows"]
                    if r["what"] == "array" and not r["compiled"] and not r.get("error")]
            near = min(rows, key=lambda r: abs(r["members"] - 48)) if rows else None
        if near is None:
            print(f"landscape plan: no eager throughput measured; running the spec's {epochs} epochs")
        else:
            members = spec["execution"]["members_per_trial"]
            train_images, test_images = 50_000, 10_000
            per_epoch = 2 * members * (train_images + test_images / 3) / near["member_images_per_s"]
            # eager throughput (the compiled step is faster), less COMPILE_S for tracing and code generation
            fit = max(1, math.floor(0.9 * (budget_s - COMPILE_S) / per_epoch))
            if fit < epochs:
                print(f"landscape plan: {epochs} epochs would take about {epochs * per_epoch:.0f} s at the measured "
                      f"{near['member_images_per_s']:.0f} member-images/s (K={near['members']}), more than the "
                      f"{budget_s:.0f} s left: running {fit} epochs instead")
                spec["train"]["epochs"] = fit
                spec["train"]["warmup_epochs"] = min(spec["train"]["warmup_epochs"], fit / 2)
            else:
                print(f"landscape plan: {epochs} epochs, about {epochs * per_epoch:.0f} s at the measured "
                      f"{near['member_images_per_s']:.0f} member-images/s (K={near['members']})")
    (out / "landscape.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def _rows(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _throughput(out: Path) -> list[str]:
    lines = [f"{'run':<8} {'what':<9} {'K':>4} {'batch':>5} {'member-img/s':>13} {'x plain loop':>12} "
             f"{'x K=1':>6} {'compile s':>9} {'peak MB':>8}"]
    for name in ("eager", "compiled"):
        res = _rows(out / f"bench_{name}.json")
        if res is None:
            lines.append(f"{name:<8} (no result: the step failed or was skipped)")
            continue
        for r in res["rows"]:
            what = "plain" if r["what"] == "baseline" else ("compiled" if r["compiled"] else "array")
            if r.get("error"):
                lines.append(f"{name:<8} {what:<9} {r['members']:>4} {r['batch_size']:>5}  FAILED: {r['error']}")
                continue
            vb, vk = r.get("vs_baseline"), r.get("vs_k1_same_batch")
            cs = f"{r['compile_s']:.1f}" if r["compiled"] else "-"
            lines.append(f"{name:<8} {what:<9} {r['members']:>4} {r['batch_size']:>5} {r['member_images_per_s']:>13.0f} "
                         f"{(f'{vb:.2f}' if vb else '-'):>12} {(f'{vk:.2f}' if vk else '-'):>6} "
                         f"{cs:>9} {r['peak_memory_mb']:>8.0f}")
        st = res.get("settings", {})
        lines.append(f"{'':<8} ({res['device_name']}, torch {res['torch']}, {st.get('precision')}, "
                     f"channels_last={st.get('channels_last')}, cudnn_benchmark={st.get('cudnn_benchmark')}; "
                     f"{res['timing']})")
    return lines


ABLATIONS = (("no_autotune", "cuDNN autotuning off"), ("nchw", "channels-last off (NCHW)"),
             ("conv_auto", "member convolutions from step 2d's table (train.conv auto)"),
             ("cuda_graph", "the whole step as one CUDA graph (train.cuda_graph)"))


def _ablations(out: Path) -> list[str]:
    """Steps 2b, 2c, 2e and 2f: one setting changed, as a ratio to step 2's row of the same K and batch."""
    eager = _rows(out / "bench_eager.json")
    full = {(r["members"], r["batch_size"]): r["member_images_per_s"] for r in (eager or {}).get("rows", [])
            if r["what"] == "array" and not r.get("error")}
    lines = []
    for name, what in ABLATIONS:
        res = _rows(out / f"bench_{name}.json")
        rows = [r for r in (res or {}).get("rows", []) if r["what"] == "array"]
        if not rows:
            lines.append(f"{what}: no result (the step failed or was skipped)")
            continue
        for r in rows:
            if r.get("error"):
                lines.append(f"{what}, K={r['members']}: FAILED: {r['error']}")
                continue
            ref = full.get((r["members"], r["batch_size"]))
            ratio = f"{r['member_images_per_s'] / ref:.2f}x step 2's row" if ref else "step 2 has no row to compare"
            lines.append(f"{what}, K={r['members']} batch {r['batch_size']}: {r['member_images_per_s']:.0f} "
                         f"member-images/s, {ratio} (peak {r['peak_memory_mb']:.0f} MB)")
    return lines


def _landscape(out: Path) -> tuple[list[str], list]:
    log = out / "train.log"
    if not log.is_file():
        return ["(no landscape: the step failed or was skipped)"], []
    text = log.read_text().splitlines()
    start = next((i for i, l in enumerate(text) if l.startswith("landscape (")), None)
    lines = [l for l in text if l.startswith("study train:") or l.startswith("wrote ")]
    if start is None:
        return lines + ["(no landscape lines in train.log)"], []
    lands = []
    res = out / "landscape.json"
    if res.is_file():
        sys.path.insert(0, str(ROOT))
        from study.landscape import landscapes
        data = json.loads(res.read_text())
        rows = [{**{k: r[k] for k in ("optimizer", "decay", "lr", "weight_decay", "seed")},
                 "error": r["final"].get("test_error", float("nan")), "diverged": bool(r["final"].get("diverged"))}
                for r in data["members"]]
        lands = landscapes(rows)
    return lines + text[start:], lands


def _memory(out: Path) -> list[str]:
    lines = []
    for name in ("eager", "compiled"):
        res = _rows(out / f"bench_{name}.json")
        if res is not None:
            lines.append(f"bench ({name}): {res['peak_memory_mb']:.0f} MB ({res['peak_memory_kind']})")
    log = out / "train.log"
    if log.is_file():
        lines += [f"landscape: {l.split(': ', 1)[1]}" for l in log.read_text().splitlines() if l.startswith("peak memory:")]
    return lines or ["(no measurement)"]


def _targets(out: Path, lands) -> list[str]:
    lines = []
    eager = _rows(out / "bench_eager.json")
    if eager:
        arrays = {r["members"]: r for r in eager["rows"] if r["what"] == "array" and not r.get("error")}
        if 128 in arrays:
            r = arrays[128]
            lines.append(f"K=128: {r['member_images_per_s']:.0f} member-images/s (target >= {TARGETS['k128_member_images_per_s']:,}); "
                         f"{r['vs_baseline']:.1f}x the plain loop (target >= {TARGETS['k128_vs_plain']:.0f}x)")
        if 1 in arrays:
            lines.append(f"K=1: {arrays[1]['member_images_per_s']:.0f} images/s (target >= {TARGETS['k1_images_per_s']:,})")
    by_decay = {L.decay: L for L in lands}
    if "coupled" in by_decay:
        lines.append(f"coupled slope {by_decay['coupled'].slope:.2f} (target <= {TARGETS['coupled_slope_max']})")
    if "independent" in by_decay:
        lo, hi = TARGETS["independent_slope_range"]
        lines.append(f"independent slope {by_decay['independent'].slope:.2f} (target in [{lo}, {hi}])")
    if len(by_decay) == 2:
        gap = abs(by_decay["coupled"].best["error"] - by_decay["independent"].best["error"])
        lines.append(f"best test errors {by_decay['coupled'].best['error']:.4f} vs {by_decay['independent'].best['error']:.4f} "
                     f"(gap {gap:.4f}, target <= {TARGETS['best_error_gap']})")
    return lines


def summary(out: Path, tiny: bool) -> None:
    print("\n======== GPU check summary ========")
    if tiny:
        print("CPU REHEARSAL at tiny size with the GPU settings forced (bf16, channels-last, cuDNN autotuning, "
              "torch.compile): "
              "these are CPU numbers, no GPU figure was measured.")
    print("\n-- throughput: arrays vs the plain single-model loop (same run), eager and compiled")
    print("\n".join(_throughput(out)))
    print("\n-- the largest array with one setting off (same shapes, eager; ratio < 1: the setting pays)")
    print("\n".join(_ablations(out)))
    print("\n-- landscape: SGD coupled vs independent (test error)")
    lines, lands = _landscape(out)
    print("\n".join(lines))
    print("\n-- peak memory")
    print("\n".join(_memory(out)))
    if not tiny:
        print("\n-- against the targets (H100, ResNet-20, CIFAR-10)")
        print("\n".join(_targets(out, lands)) or "(nothing measured)")
    failed = [l for l in (out / "failed.txt").read_text().splitlines() if l] if (out / "failed.txt").is_file() else []
    print("\n-- steps that failed: " + ("; ".join(failed) if failed else "none"))


def sync_check(device: str) -> None:
    """A few training steps (batch and augmentation on the device, bf16, channels-last, the divergence check,
    the flat optimizer) under torch.cuda.set_sync_debug_mode("error"): any host synchronization raises and
    names the operation. Without CUDA the steps run unchecked (the code path is rehearsed)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from study.data import load_dataset
    from study.engine import ArrayConfig, ArrayTrainer
    from study.spec import DataSpec, MemberSpec, ModelSpec, TrainSpec

    data = load_dataset("synthetic", synthetic_size=(512, 64))
    cuda = torch.device(device).type == "cuda"
    from study.engine import GRAPH_WARMUP

    for opt, decay, graph in (("sgd", "independent", False), ("adam", "decoupled", False), ("adam", "decoupled", True)):
        members = [MemberSpec(opt, decay, (0.1 if opt == "sgd" else 1e-3) * (k + 1), 1e-3, seed=k) for k in range(4)]
        # on a CPU (the rehearsal) a smaller model and batch: bf16 + channels-last is slow there in eager mode; eager
        # (compile off) as the plain step runs, and with train.cuda_graph its replays
        train = TrainSpec(epochs=1, batch_size=64 if cuda else 16, precision="bf16", channels_last=True, cudnn_benchmark=True,
                          warmup_epochs=0.5, compile=False, cuda_graph=graph)
        tr = ArrayTrainer(members, data, ArrayConfig(ModelSpec("resnet20" if cuda else "resnet8"), train, DataSpec()), device)
        order, aug = tr._generators(0)
        perm = torch.randperm(len(data.train_y), generator=order).to(device)

        def step(i):
            x, y = tr._batch(perm[i * tr.batch:(i + 1) * tr.batch], aug)
            return tr.train_step(x, y, tr._schedule[i])

        first = GRAPH_WARMUP + 1 if graph else 2  # the optimizer's state (and the graph's recording) come first
        for i in range(first):
            step(i)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            for i in range(first, first + 4):
                loss = step(i)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
        assert bool(torch.isfinite(loss).all()), "a member diverged in the sync check"
        what = (("replays of the recorded step" if cuda else "static-buffer steps") + " (train.cuda_graph)") if graph \
            else "training steps"
        print(f"{opt}-{decay}: 4 {what} (batch, augmentation, bf16 forward, backward, divergence check, "
              + ("optimizer) ran with no host synchronization" if cuda else "optimizer) ran; the sync check needs CUDA"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["plan", "summary", "synccheck"])
    p.add_argument("out", type=Path)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--budget-s", type=float, default=300.0)
    p.add_argument("--device", default="cuda")
    a = p.parse_args(argv)
    if a.command == "synccheck":
        sync_check(a.device)
    elif a.command == "plan":
        plan(a.out, a.tiny, a.budget_s)
    else:
        summary(a.out, a.tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
