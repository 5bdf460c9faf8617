"""Each member convolution of ResNet-20, timed forward and backward in every formulation, and the table `auto` reads.

    .venv/bin/python bench/conv_forms.py [--device cuda] [--members 16,128] [--batch 128] [--write TABLE.json]

For each distinct layer shape of ResNet-20 on 32×32 inputs (cin>cout, stride, input side) and each array size K:
the grouped convolution (groups=K) and the batched GEMM on a member-major tensor (study.models.conv_bmm), each
in NCHW and channels-last, in the precision a study uses on the device (bf16 autocast on CUDA, fp32 on a CPU).
Time: forward + backward (input and weight gradients) of one layer, the median of `--repeats` after `--warmup`,
with the device synchronized. `--write` adds this device's choice per layer (the faster formulation in the layout
a study uses there: channels-last on CUDA) to TABLE.json, which `train.conv: auto` reads through
$STUDY_CONV_TABLE (study/engine.py). Every formulation equals F.conv2d (tests/test_conv.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = [(16, 16, 1, 32), (16, 32, 2, 32), (32, 32, 1, 16), (32, 64, 2, 16), (64, 64, 1, 8)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--members", default="16,128", help="array sizes K, comma-separated")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--write", help="add this device's per-layer choice to this JSON table")
    a = p.parse_args()
    import torch
    import torch.nn.functional as F

    from study.engine import device_kind
    from study.models import conv_bmm

    device = torch.device(a.device)
    bf16 = device.type == "cuda"
    study_layout = "channels_last" if device.type == "cuda" else "nchw"  # what train.channels_last auto gives
    forms = {"grouped": lambda x, w, s: F.conv2d(x, w.reshape(-1, *w.shape[2:]), None, s, 1, groups=w.shape[0]),
             "bmm": lambda x, w, s: conv_bmm(x, w, s, 1)}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn) -> float:
        for _ in range(a.warmup):
            fn()
        sync()
        out = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t)
        return statistics.median(out) * 1e3

    kind = device_kind(device)
    print(f"member convolutions of resnet20, {kind}, batch {a.batch}, {'bf16 autocast' if bf16 else 'fp32'}, "
          f"torch {torch.__version__}; forward + backward ms, median of {a.repeats}; a study's layout here: {study_layout}")
    table: dict[str, dict[str, str]] = {}
    for k in [int(v) for v in a.members.split(",")]:
        choice = table.setdefault(str(k), {})
        for cin, cout, stride, side in SHAPES:
            key = f"{cin}>{cout} k3 s{stride} @{side}"
            w = torch.randn(k, cout, cin, 3, 3, device=device, requires_grad=True)
            row = {}
            for layout in ("nchw", "channels_last"):
                x = torch.randn(a.batch, k * cin, side, side, device=device)
                x = (x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x).requires_grad_()
                for name, fn in forms.items():
                    def step(fn=fn, x=x):
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                            out = fn(x, w, stride)
                        out.float().sum().backward()
                    try:
                        row[(name, layout)] = timed(step)
                    except RuntimeError as e:  # out of memory at the largest K: the others stand
                        row[(name, layout)] = float("nan")
                        print(f"  K={k} {key} {name} {layout}: {str(e).splitlines()[0][:100]}")
                    x.grad = w.grad = None
            best = min(("grouped", "bmm"), key=lambda f: row[(f, study_layout)] if row[(f, study_layout)] == row[(f, study_layout)] else float("inf"))
            choice[key] = best
            print(f"  K={k:<4} {key:<18} " + "  ".join(f"{n}/{lay} {v:8.2f}" for (n, lay), v in row.items())
                  + f"  -> {best}", flush=True)
    if a.write:
        path = Path(a.write)
        doc = json.loads(path.read_text()) if path.is_file() else {}
        doc[kind] = table
        path.write_text(json.dumps(doc, indent=1))
        print(f"wrote {kind}'s choices to {path}")


if __name__ == "__main__":
    main()
