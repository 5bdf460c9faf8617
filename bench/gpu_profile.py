"""Where the time of one array training step goes: torch.profiler over a few steps of the engine's step.

  python bench/gpu_profile.py DATA_DIR --members 16,128 [--device cuda] [--steps 5] [--compile]

Prints, per K, the kernels (CUDA) or operators (CPU) that take the most time, and that time grouped into
convolution, normalization, elementwise/optimizer, copies and the rest, as shares of the step. The step is
`study.bench.array_step`, the one `study bench` times (bf16 and channels-last as on the GPU, forced on a CPU;
cuDNN autotuning as auto: on for CUDA).
"""

from __future__ import annotations

import argparse
import re
import sys

import torch

from study.bench import array_step
from study.data import load_dataset

GROUPS = [("convolution", r"conv|cudnn|implicit_gemm|wgrad|dgrad|sm90_xmma|cutlass|gemm"),
          ("normalization", r"batch_norm|bn_|welford|native_batch"),
          ("copies/layout", r"copy|transpose|permute|contiguous|cat|memcpy|nchwToNhwc|nhwcToNchw"),
          ("elementwise/optimizer", r"elementwise|vectorized|foreach|add|mul|where|reduce|sum|lerp|addcmul|sqrt")]


def profile(data, k: int, batch: int, device: str, steps: int, compile: bool) -> None:
    step, tr = array_step(data, "resnet20", k, batch, device, compile, "bf16", True)
    for _ in range(3):
        step()
    cuda = device.startswith("cuda")
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    kernel = torch.autograd.DeviceType.CUDA
    # on CUDA only the kernels themselves: an operator's "self device time" counts its kernels a second time
    events = [e for e in prof.key_averages() if getattr(e, key) > 0 and (not cuda or e.device_type == kernel)]
    total = sum(getattr(e, key) for e in events) or 1.0
    print(f"\n== K={k}, batch {tr.batch}, {device}, compile={compile}: {total / steps / 1e3:.1f} ms of "
          f"{'kernel' if cuda else 'operator'} time per step ({len(events)} distinct)")
    shares = dict.fromkeys([g for g, _ in GROUPS] + ["other"], 0.0)
    for e in events:
        g = next((g for g, rx in GROUPS if re.search(rx, e.key, re.I)), "other")
        shares[g] += getattr(e, key)
    print("  " + ", ".join(f"{g} {100 * v / total:.0f} %" for g, v in shares.items()))
    for e in sorted(events, key=lambda e: -getattr(e, key))[:18]:
        print(f"  {100 * getattr(e, key) / total:5.1f} %  {getattr(e, key) / steps / 1e3:8.2f} ms/step  "
              f"x{e.count // steps:<4} {e.key[:110]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="CIFAR-10 Parquet folder, or 'synthetic'")
    p.add_argument("--members", default="16,128")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    a = p.parse_args(argv)
    data = load_dataset("synthetic", synthetic_size=(2048, 256)) if a.data == "synthetic" else load_dataset("parquet", a.data)
    if a.device.startswith("cuda"):
        data = data.to(a.device)
    for k in (int(x) for x in a.members.split(",")):
        try:
            profile(data, k, a.batch_size, a.device, a.steps, a.compile)
        except Exception as e:  # noqa: BLE001 - report and go on to the next K
            print(f"!! K={k}: {type(e).__name__}: {str(e)[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
