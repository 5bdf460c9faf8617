"""`study bench`: training throughput of member arrays against a plain single-model PyTorch loop.

Owns the benchmark only; imports no Ray, Optuna or MLflow. Throughput is member-images per second
(K members × images per step / seconds). Timing excludes warm-up (and compilation), synchronizes the
device, and reports the median of several timed windows. The baseline, measured in the same run, is
what a typical Ray Tune example does: an ordinary nn.Module ResNet, a torch DataLoader with CPU
augmentation (torchvision transforms), batch 128, one model at a time, eager, under the same precision and
memory format as the arrays.

Device settings: `precision` (auto | fp32 | bf16), `channels_last` and `cudnn_benchmark` (None = auto, True,
False; the plain loop follows both) and `compile` ("auto" | "off" | "on" | "both": as a study's arrays do, i.e.
compiled on CUDA and eager on a CPU; eager rows; compiled rows; or both in the same run). Compiled rows report
compile_s, the time of the first compiled step (tracing and code generation), never counted in the
throughput; arrays of equal shapes share the compiled graphs.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset, load_dataset
from .engine import GRAPH_WARMUP, ArrayConfig, ArrayTrainer
from .spec import DataSpec, MemberSpec, ModelSpec, TrainSpec


@dataclass
class Row:
    what: str                 # "array" or "baseline"
    members: int
    batch_size: int
    member_images_per_s: float
    step_ms: float
    peak_memory_mb: float
    compile_s: float = 0.0
    compiled: bool = False
    error: str = ""           # why the row could not be measured (it is then NaN)
    conv: str = ""            # the member convolutions as resolved for this array (train.conv auto: per layer)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (CPU)


def _timed(step, device, warmup: int, steps: int, windows: int) -> tuple[float, float]:
    """(median seconds per step over `windows` windows of `steps` steps, seconds spent in warm-up)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warm = time.perf_counter() - t0
    times = []
    for _ in range(windows):
        _sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        times.append((time.perf_counter() - t) / steps)
    return statistics.median(times), warm


def array_step(data: Dataset, model: str, members: int, batch_size: int, device, compile: bool = False,
               precision: str = "auto", channels_last=None, cudnn_benchmark=None, conv: str = "auto",
               cuda_graph: bool = False):
    """(step, trainer): one call of `step()` is one training step of the engine for an array of `members`
    (SGD, coupled decay; the decay mode does not change the cost), on the next batch of a fixed order."""
    ms = [MemberSpec("sgd", "coupled", 0.05 * (1 + k % 7), 5e-4, seed=k) for k in range(members)]
    train = TrainSpec(epochs=1, batch_size=batch_size, compile=compile, precision=precision, channels_last=channels_last,
                      cudnn_benchmark=cudnn_benchmark, conv=conv, cuda_graph=cuda_graph)
    tr = ArrayTrainer(ms, data, ArrayConfig(ModelSpec(model), train, DataSpec()), torch.device(device))
    order, aug = tr._generators(0)
    n = len(data.train_y)
    perm = torch.randperm(n, generator=order).to(device)
    state = {"i": 0}

    def step():
        i = state["i"] % max(1, n // tr.batch)
        state["i"] += 1
        x, y = tr._batch(perm[i * tr.batch:(i + 1) * tr.batch], aug)
        tr.train_step(x, y, tr.one)

    return step, tr


def bench_array(data: Dataset, model: str, members: int, batch_size: int, device, warmup=3, steps=5, windows=3,
                compile: bool = False, precision: str = "auto", channels_last=None, cudnn_benchmark=None,
                conv: str = "auto", cuda_graph: bool = False) -> Row:
    """The engine's training step for an array of `members`, timed."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step, tr = array_step(data, model, members, batch_size, device, compile, precision, channels_last, cudnn_benchmark,
                          conv, cuda_graph)
    if cuda_graph:  # the recording happens after the engine's eager warm-up steps, never inside a timed window
        warmup = max(warmup, GRAPH_WARMUP + 1)
    sec, _ = _timed(step, device, warmup, steps, windows)
    return Row("array", members, tr.batch, members * tr.batch / sec, sec * 1e3, _peak_mb(device), tr.compile_s,
               tr.compiled, conv=tr.settings()["conv"])


# --------------------------------------------------------------------------- the baseline: a plain loop

class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x):
        out = F.relu(self.b1(self.c1(x)))
        out = self.b2(self.c2(out))
        sc = x
        if self.stride != 1 or self.pad:
            sc = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + sc)


class PlainResNet(nn.Module):
    """An ordinary CIFAR ResNet (He et al. 2016: depth 6n+2, option A shortcuts), written as the usual examples
    write it: widths 16, 32, 64 times `width`; PyTorch's default init, or torchvision's (`fan_out_init`)."""

    def __init__(self, depth=20, num_classes=10, in_channels=3, width=1, fan_out_init=False):
        super().__init__()
        n, widths = (depth - 2) // 6, [16 * width, 32 * width, 64 * width]
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, cout in enumerate(widths):
            for j in range(n):
                layers.append(_Block(cin, cout, 2 if i > 0 and j == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        if fan_out_init:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class UInt8Images(torch.utils.data.Dataset):
    """uint8 (N, C, H, W) tensors as a torch Dataset with a per-image transform (the torchvision idiom)."""

    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(self.x[i]), self.y[i]


def bench_baseline(data: Dataset, depth: int, batch_size: int, device, warmup=3, steps=5, windows=3,
                   workers: int = 2, bf16: bool = False, channels_last: bool = False,
                   cudnn_benchmark: bool = False) -> Row:
    """One model, torch DataLoader with torchvision CPU augmentation, SGD with weight decay: the usual loop,
    under the arrays' precision, memory format and cuDNN autotuning."""
    from torchvision.transforms import v2

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    size = data.train_x.shape[-1]
    tf = v2.Compose([v2.RandomCrop(size, padding=4 if size >= 32 else 0), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(data.mean, data.std)])
    loader = torch.utils.data.DataLoader(UInt8Images(data.train_x, data.train_y, tf), batch_size=batch_size,
                                         shuffle=True, drop_last=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    model = PlainResNet(depth, data.num_classes, data.in_channels).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    it = iter(loader)

    def step():
        nonlocal it
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sec, _ = _timed(step, device, warmup, steps, windows)
    return Row("baseline", 1, batch_size, batch_size / sec, sec * 1e3, _peak_mb(device))


COMPILE_MODES = {"off": (False,), "on": (True,), "both": (False, True)}


def _result(model, device, dataset, windows, steps, warmup, bf16, cl, cudnn, compile, rows, baseline, conv="auto",
            cuda_graph=False) -> dict:
    out = [asdict(r) for r in rows]
    single = {(r["compiled"], r["batch_size"]): r["member_images_per_s"] for r in out
              if r["what"] == "array" and r["members"] == 1 and not r["error"]}
    base_ips = out[0]["member_images_per_s"] if baseline and out and not out[0]["error"] else None
    for r in out:
        if r["what"] == "array" and not r["error"]:
            r["vs_baseline"] = r["member_images_per_s"] / base_ips if base_ips else None
            key = (r["compiled"], r["batch_size"])
            r["vs_k1_same_batch"] = r["member_images_per_s"] / single[key] if key in single else None
    return {"model": model, "device": str(device), "dataset": dataset,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "settings": {"precision": "bf16" if bf16 else "fp32", "channels_last": cl, "cudnn_benchmark": cudnn,
                         "compile": compile, "conv": conv,   # conv as asked; each row has it resolved
                         "cuda_graph": cuda_graph},
            "peak_memory_mb": max((r["peak_memory_mb"] for r in out if not r["error"]), default=0.0),
            "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS",
            "timing": f"median of {windows} windows of {steps} steps after {warmup} warm-up steps",
            "rows": out}


def _failed(what, members, batch, device, compiled, e: Exception, log) -> Row:
    """A row that could not be measured (out of memory, a compiler error): reported, and the bench goes on."""
    msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    log(f"{what:<9} K={members:<4} batch {batch}: FAILED ({msg}); going on", flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Row(what if what == "baseline" else "array", members, batch, math.nan, math.nan, math.nan,
               compiled=compiled, error=msg)


def bench_data(dataset: str = "synthetic", path=None):
    """The images a benchmark steps on (synthetic: 4,096 training images of CIFAR-10's shape)."""
    return load_dataset(dataset, path, synthetic_size=(4096, 256)) if dataset != "digits" else load_dataset("digits")


def run_bench(model="resnet20", members=(1, 8, 32), batch_sizes=(128,), device="cpu", dataset="synthetic",
              path=None, warmup=3, steps=5, windows=3, compile="off", baseline=True, workers=2, log=print,
              precision: str = "auto", channels_last=None, cudnn_benchmark=None, on_row=None, data=None,
              conv: str = "auto", cuda_graph: bool = False) -> dict:
    """Every row, in order: the plain loop, then arrays (eager, then compiled). A row that fails is recorded
    with its error and the others still run; `on_row(result)` sees the result so far after every row. `data`:
    bench_data(dataset, path), when the caller has read it already."""
    from .engine import resolve_channels_last, resolve_cudnn_benchmark, resolve_precision

    device = torch.device(device)
    if isinstance(compile, bool):
        compile = "on" if compile else "off"
    if compile == "auto":  # what a study's arrays do (train.compile auto): compiled on CUDA, eager on a CPU
        compile = "on" if device.type == "cuda" else "off"
    if compile not in COMPILE_MODES:
        raise ValueError(f"invalid compile: must be auto, off, on or both, but got compile={compile!r}")
    bf16, cl = resolve_precision(precision, device), resolve_channels_last(channels_last, device)
    cudnn = resolve_cudnn_benchmark(cudnn_benchmark, device)
    data = bench_data(dataset, path) if data is None else data
    data = data.to(device) if device.type == "cuda" else data
    rows: list[Row] = []
    depth = int(model.removeprefix("resnet")) if model.startswith("resnet") else 20

    def result():
        return _result(model, device, dataset, windows, steps, warmup, bf16, cl, cudnn, compile, rows, baseline, conv,
                       cuda_graph)

    if baseline:
        try:
            base = bench_baseline(data.to("cpu"), depth, 128, device, warmup, steps, windows, workers, bf16, cl, cudnn)
            log(f"baseline  K=1   batch 128: {base.member_images_per_s:>10.0f} images/s  ({base.step_ms:.1f} ms/step)",
                flush=True)
        except Exception as e:  # noqa: BLE001 - the arrays are still worth measuring
            base = _failed("baseline", 1, 128, device, False, e, log)
        rows.append(base)
        if on_row:
            on_row(result())
    for compiled in COMPILE_MODES[compile]:
        what = "compiled" if compiled else "array"
        for b in batch_sizes:
            for k in members:
                try:
                    r = bench_array(data, model, k, b, device, warmup, steps, windows, compiled, precision, channels_last,
                                    cudnn_benchmark, conv, cuda_graph)
                    log(f"{what:<9} K={k:<4} batch {b}: {r.member_images_per_s:>10.0f} member-images/s  "
                        f"({r.step_ms:.1f} ms/step, peak {r.peak_memory_mb:.0f} MB"
                        + (f", compile {r.compile_s:.1f} s)" if compiled else ")"), flush=True)
                except Exception as e:  # noqa: BLE001 - e.g. out of memory at the largest K: the others stand
                    r = _failed(what, k, b, device, compiled, e, log)
                rows.append(r)
                if on_row:
                    on_row(result())
    return result()


def format_table(result: dict) -> str:
    st = result.get("settings", {})
    lines = [f"settings: {st.get('precision', '?')}, channels_last={st.get('channels_last', '?')}, "
             f"cudnn_benchmark={st.get('cudnn_benchmark', '?')}, conv={st.get('conv', 'grouped')}, compile={st.get('compile', '?')}, "
             f"cuda_graph={st.get('cuda_graph', False)}; peak memory {result.get('peak_memory_mb', 0):.0f} MB "
             f"({result.get('peak_memory_kind', '')})",
             f"{'what':<9} {'K':>4} {'batch':>5} {'member-img/s':>13} {'ms/step':>8} {'peak MB':>8} "
             f"{'x baseline':>10} {'x K=1':>6} {'compile s':>9}"]
    for r in result["rows"]:
        if r.get("error"):
            what = "compiled" if r.get("compiled") else r["what"]
            lines.append(f"{what:<9} {r['members']:>4} {r['batch_size']:>5}  FAILED: {r['error']}")
            continue
        vb = r.get("vs_baseline")
        vk = r.get("vs_k1_same_batch")
        what = "compiled" if r.get("compiled") else r["what"]
        cs = f"{r['compile_s']:.1f}" if r.get("compiled") else "-"
        lines.append(f"{what:<9} {r['members']:>4} {r['batch_size']:>5} {r['member_images_per_s']:>13.0f} "
                     f"{r['step_ms']:>8.1f} {r['peak_memory_mb']:>8.0f} {(f'{vb:.2f}' if vb else '-'):>10} "
                     f"{(f'{vk:.2f}' if vk else '-'):>6} {cs:>9}")
    return "\n".join(lines)


def write_json(result: dict, path) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
