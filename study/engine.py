"""Train one member array: K members of one optimizer and decay mode, same minibatches, own weights.

Owns the training loop, the learning-rate schedule, divergence handling and the per-epoch metrics of
docs/science.md. Pure torch: it must not import ray, optuna or mlflow (tests/test_engine.py blocks them).
Adapters (Ray Tune, the CLI) give it members and a `report(epoch, rows)` callback.

Device settings (TrainSpec): `precision` (auto | fp32 | bf16: autocast to bfloat16), `channels_last`
(None = auto | True | False: channels-last activations and conv weights), `cudnn_benchmark` (None = auto |
True | False: cuDNN times its convolution algorithms for each new shape and keeps the fastest; a process-wide
switch of torch, set by every trainer) and `compile` (torch.compile of the forward and loss; AOTAutograd
compiles their backward). auto (the default of each) means on for CUDA, off for a CPU; every
setting runs on a CPU too, so no code path is CUDA-only. The optimizer works on one flat (K, P) buffer
per param group (study.optim flat groups): the update, the divergence check and the masking of diverged
members are a few kernels per group, and the step has no host synchronization.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from . import diagnostics as diag
from .data import Dataset, augment
from .models import build_model
from .optim import build_optimizer, flat_backward, param_groups
from .spec import CHANNELS, EPOCH_METRICS, DataSpec, MemberSpec, ModelSpec, TrainSpec, final_metrics, shown, steps_per_epoch, warmup_steps  # noqa: F401


ANGLE_STEPS = 8  # angular update: mean over the last (up to) 8 steps of each epoch
GRAPH_WARMUP = 3  # train.cuda_graph: eager steps before the step is recorded (optimizer state, cuDNN's choices)


def schedule_multiplier(step: int, total_steps: int, schedule: str = "cosine", warmup_steps: int = 0,
                        milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1) -> float:
    """s_t ∈ [0, 1], the multiplier of the base lr at `step` (0-based): a pure function of the step.

    Linear warm-up s = (step+1)/warmup_steps, then cosine 0.5·(1 + cos(π·p)) with p the fraction of the
    post-warm-up steps done, constant 1, or step: gamma^(milestones passed), milestones as run fractions.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** sum(step >= q * total_steps for q in milestones)
    if schedule == "cosine":
        p = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"invalid schedule: must be cosine, constant or step, but got schedule={schedule!r}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("invalid train.device: cuda was asked for but torch sees no CUDA device, got device='cuda'")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> bool:
    """True when the array trains under bfloat16 autocast: bf16, or auto on CUDA."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"invalid train.precision: must be auto, fp32 or bf16, but got precision={precision!r}")
    return precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda")


def _resolve_switch(field: str, value, device: torch.device) -> bool:
    """A device setting that is auto | true | false: None or "auto" is on for CUDA, off for a CPU."""
    if value in (None, "auto"):
        return torch.device(device).type == "cuda"
    if not isinstance(value, bool):
        raise ValueError(f"invalid train.{field}: must be auto, true or false, but got {field}={value!r}")
    return value


def resolve_channels_last(channels_last, device: torch.device) -> bool:
    """True when activations and conv weights are channels-last: True, or None/"auto" on CUDA."""
    return _resolve_switch("channels_last", channels_last, device)


def resolve_cudnn_benchmark(cudnn_benchmark, device: torch.device) -> bool:
    """True when cuDNN autotunes its convolutions (torch.backends.cudnn.benchmark): True, or None/"auto" on
    CUDA. On a CPU the switch is set all the same and changes nothing."""
    return _resolve_switch("cudnn_benchmark", cudnn_benchmark, device)


def resolve_compile(compile, device: torch.device) -> bool:
    """True when the array step's forward and loss run under torch.compile: True, or None/"auto" on CUDA (an
    H100 at K = 128: 236,923 member-images/s compiled against 175,664 eager, README). One compiled function
    per process serves every array of the same shapes (compiled_member_loss)."""
    return _resolve_switch("compile", compile, device)


def device_kind(device: torch.device) -> str:
    """The name a convolution table files a device under: "cpu", or the CUDA device's name (an H100's own)."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def conv_table() -> dict:
    """The measured convolution table (bench/conv_forms.py --write): device kind -> K -> layer shape key ->
    formulation. $STUDY_CONV_TABLE names its file; none (the default, and the case on a device never measured)
    means every layer grouped."""
    import json
    import os

    path = os.environ.get("STUDY_CONV_TABLE")
    if not path:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"invalid STUDY_CONV_TABLE: {path} is no convolution table ({e})") from None


def resolve_conv(conv: str, device: torch.device, members: int):
    """train.conv for an array of `members` on `device`: a formulation for every layer, or (auto) the table's
    per-layer choice at the measured K nearest to `members` (in ratio); grouped where the table has no entry."""
    if conv != "auto":
        return conv
    per_k = conv_table().get(device_kind(device))
    if not per_k:
        return "grouped"
    nearest = min(per_k, key=lambda k: abs(math.log(int(k) / members)))
    return per_k[nearest]


EVAL_BATCH = {"cuda": 1024, "cpu": 64}  # test images per forward pass when the spec says null (auto)


def resolve_eval_batch_size(value: int | None, device: torch.device) -> int:
    """train.eval_batch_size, or the device's default: large on CUDA; on a CPU small batches keep a layer's
    activations in cache (resnet8 on digits, 41 members: 0.38 s per evaluation at 64 against 0.76 s at 1024)."""
    return value if value is not None else EVAL_BATCH.get(device.type, 1024)


def member_loss(model: torch.nn.Module, x: Tensor, y: Tensor, bf16: bool) -> Tensor:
    """Per-member mean cross-entropy of a member array, shape (K,), in float32."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)                                   # (N, K, classes)
    K = logits.shape[1]
    return F.cross_entropy(logits.float().permute(0, 2, 1), y[:, None].expand(-1, K), reduction="none").mean(0)


_COMPILED: dict[str, Callable] = {}


def compiled_member_loss() -> Callable:
    """member_loss under torch.compile, one per process: every array of the same shapes and settings reuses
    its graphs (the model is an argument, so a new array of equal shapes finds them in dynamo's cache)."""
    if "loss" not in _COMPILED:
        _COMPILED["loss"] = torch.compile(member_loss)
    return _COMPILED["loss"]


def check_array(members: Sequence[MemberSpec]) -> None:
    if not members:
        raise ValueError("an array needs at least one member, but got none")
    keys = {m.array_key() for m in members}
    if len(keys) != 1:
        raise ValueError(f"an array's members share optimizer, decay and optimizer settings, but got {sorted(map(str, keys))}")


def pack_arrays(members: Sequence[MemberSpec], size: int) -> list[list[MemberSpec]]:
    """Group members by array key (optimizer, decay, optimizer settings), in order, at most `size` per array."""
    groups: dict[tuple, list[MemberSpec]] = {}
    for m in members:
        groups.setdefault(m.array_key(), []).append(m)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


@dataclass
class ArrayConfig:
    model: ModelSpec
    train: TrainSpec
    data: DataSpec

    def augmentation(self, ds: Dataset) -> tuple[int, bool]:
        """The spec's crop padding and flip, else the dataset's default (study/datasets.py)."""
        pad = self.data.crop_padding if self.data.crop_padding is not None else (4 if ds.padded_crop else 0)
        flip = self.data.flip if self.data.flip is not None else ds.padded_crop
        return pad, flip


class ArrayTrainer:
    """Trains `members` (one array) on `data`; `run(report)` calls report(epoch, rows) after every epoch.

    Member k's rows hold the metrics of EPOCH_METRICS (those of PRECONDITIONER_METRICS only for Adam and
    Adagrad arrays; a diverged member's diagnostics are NaN). A member whose loss turns non-finite is marked
    diverged: from that step on its weights and optimizer receive no update (its gradient is zeroed and
    its lr is 0), and the other members continue exactly as they would have.

    `bf16`, `channels_last`, `cudnn_benchmark` and `compiled` are the resolved device settings; `compile_s` is the time of the
    first compiled step (tracing and code generation, or a cache hit), 0 when not compiled.
    """

    def __init__(self, members: Sequence[MemberSpec], data: Dataset, config: ArrayConfig, device="cpu"):
        check_array(members)
        self.members, self.config = list(members), config
        self.device = torch.device(device)
        self.K = len(members)
        t = config.train
        self.bf16 = resolve_precision(getattr(t, "precision", "auto"), self.device)
        self.channels_last = resolve_channels_last(getattr(t, "channels_last", None), self.device)
        self.compiled = resolve_compile(getattr(t, "compile", None), self.device)
        self.cudnn_benchmark = resolve_cudnn_benchmark(getattr(t, "cudnn_benchmark", None), self.device)
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        self.data = data.to(self.device)
        self.batch = min(t.batch_size, len(data.train_y))
        self.steps_per_epoch = steps_per_epoch(t.batch_size, len(data.train_y))  # drop_last: full batches only
        self.total_steps = t.epochs * self.steps_per_epoch
        self.warmup_steps = warmup_steps(t, self.steps_per_epoch)
        self.crop_padding, self.flip = config.augmentation(data)
        self.model = build_model(config.model.name, self.K, data.num_classes, data.in_channels,
                                 config.model.width, seeds=[m.seed for m in members]).to(self.device)
        self.model.set_memory_format(self.channels_last)
        self.conv = self.model.set_conv(resolve_conv(getattr(t, "conv", "auto"), self.device, self.K),
                                        size=data.train_x.shape[-1])
        lr = torch.tensor([m.lr for m in members], dtype=torch.float32, device=self.device)
        wd = torch.tensor([m.weight_decay for m in members], dtype=torch.float32, device=self.device)
        groups, self.decay_counts = param_groups(self.model.named_parameters(), wd, member_dims=1, flat=True)
        self.optimizer = build_optimizer(members[0].optimizer, groups, lr, members[0].decay,
                                         **members[0].optimizer_kwargs())
        self.base_lr, self.weight_decay = lr, wd
        self._lr = lr.clone()          # every group's lr: base_lr · s_t · alive, rewritten in place each step
        self._bind_lr()
        # s_t for every step of the run, computed once: on the host (the epoch's rows) and on the device (a step
        # reads its multiplier without a host transfer)
        self._multipliers = [schedule_multiplier(i, self.total_steps, t.schedule, self.warmup_steps, t.milestones,
                                                 t.gamma) for i in range(self.total_steps)]
        self._schedule = torch.tensor(self._multipliers, dtype=torch.float32, device=self.device)
        self.one = torch.ones((), device=self.device)
        self.decayed = groups[0]["params"] if self.decay_counts["decayed_tensors"] else []
        self.invariant = self.model.scale_invariant_weights()
        self.alive = torch.ones(self.K, dtype=torch.bool, device=self.device)
        self.epoch = 0                 # epochs completed
        self.history: list[list[dict]] = [[] for _ in members]
        self.elapsed = 0.0             # seconds of training before this process (resume)
        # per decayed tensor, each output channel's √v̂ summed over the epochs' ends (diagnostics.channel_sqrt_v)
        self.sqrt_v_sum: list[Tensor] | None = None
        self.sqrt_v_epochs = 0
        self.compile_s = 0.0
        self._loss_fn = compiled_member_loss() if self.compiled else member_loss
        self.cuda_graph = bool(getattr(t, "cuda_graph", False))
        self._drop_graph()

    def _drop_graph(self) -> None:
        """Forget the recorded step and its static buffers (a loaded state replaces the tensors it points at)."""
        self._static: tuple[Tensor, Tensor, Tensor] | None = None
        self._graph = None
        self._graph_loss: Tensor | None = None
        self._graph_warmup = 0
        self._side = None

    def _bind_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr

    def settings(self) -> dict:
        """The resolved device settings, as reported by `study train` and `study bench`."""
        forms = sorted(set(self.conv.values()))
        conv = forms[0] if len(forms) == 1 else ", ".join(f"{sum(v == f for v in self.conv.values())} {f}" for f in forms)
        return {"device": str(self.device), "precision": "bf16" if self.bf16 else "fp32",
                "channels_last": self.channels_last, "cudnn_benchmark": self.cudnn_benchmark, "compile": self.compiled,
                "conv": conv, "cuda_graph": self.cuda_graph}

    # ------------------------------------------------------------------ state (checkpoints)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "alive": self.alive.detach().cpu().clone(), "history": self.history, "elapsed": self.elapsed,
                "members": [m.to_dict() for m in self.members],
                "sqrt_v": None if self.sqrt_v_sum is None else ([t.cpu() for t in self.sqrt_v_sum], self.sqrt_v_epochs)}

    def load_state_dict(self, state: dict) -> None:
        if [MemberSpec.from_dict(m) for m in state["members"]] != list(self.members):  # any version's form
            raise ValueError("checkpoint belongs to a different array of members")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._bind_lr()  # the loaded groups carry the saved lr tensors; the step writes into self._lr
        self.alive = state["alive"].to(self.device).clone()  # stepped in place: never the saved state's tensor
        self.epoch, self.history, self.elapsed = state["epoch"], state["history"], state["elapsed"]
        self._drop_graph()
        if state.get("sqrt_v") is not None:  # a checkpoint from before the diagnostics starts its average anew
            sums, self.sqrt_v_epochs = state["sqrt_v"]
            self.sqrt_v_sum = [t.to(self.device) for t in sums]

    # ------------------------------------------------------------------ training

    def _generators(self, epoch: int):
        """Data order and augmentation for `epoch`, fixed by (train.seed, epoch): shared by the array, resumable."""
        seed = self.config.train.seed * 1_000_003 + epoch
        order = torch.Generator().manual_seed(seed)
        aug = torch.Generator(device=self.device).manual_seed(seed + 1)
        return order, aug

    def train_step(self, x: Tensor, y: Tensor, s: Tensor) -> Tensor:
        """One step of every member at schedule multiplier s (a 0-d tensor on the device); returns the
        per-member loss (0 for diverged members), valid until the next step. No host synchronization.

        With train.cuda_graph the step reads its batch and s from static buffers (copied in here) and, after
        GRAPH_WARMUP eager steps, is replayed from one recorded CUDA graph: the whole step, optimizer included,
        in one launch. On a CPU the same static-buffer path runs eagerly (nothing to record)."""
        if not self.cuda_graph:
            return self._step(x, y, s)
        if self._static is None:
            self._static = (torch.empty_like(x), torch.empty_like(y), torch.empty_like(s))
        sx, sy, ss = self._static
        sx.copy_(x)
        sy.copy_(y)
        ss.copy_(s)
        if self._graph is not None:
            self._graph.replay()
            return self._graph_loss
        if self._graph_warmup < GRAPH_WARMUP or self.device.type != "cuda":
            self._graph_warmup += 1
            out = self._on_graph_stream(lambda: self._step(sx, sy, ss))
            if self._graph_warmup == GRAPH_WARMUP:  # the optimizer's state exists now: its counters go on the device
                self.optimizer.count_steps_on_device()
            return out
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._side_stream()):  # records the step: nothing runs yet
            self._graph_loss = self._step(sx, sy, ss)
        self._graph = graph
        graph.replay()
        return self._graph_loss

    def _side_stream(self):
        """The CUDA stream the step's warm-up and recording share (torch's CUDA-graph notes: tensors with autograd
        history warm up off the default stream)."""
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        return self._side

    def _on_graph_stream(self, fn):
        """fn() on the side stream the step is recorded on (CUDA); on a CPU, fn() as it is."""
        if self.device.type != "cuda":
            return fn()
        main, side = torch.cuda.current_stream(self.device), self._side_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = fn()
        main.wait_stream(side)
        out.record_stream(main)  # made on the side stream, read on this one: not reused before that read
        return out

    def _step(self, x: Tensor, y: Tensor, s: Tensor) -> Tensor:
        first = self.compiled and not self.compile_s
        t0 = time.perf_counter() if first else 0.0
        loss = self._loss_fn(self.model, x, y, self.bf16)  # (K,) mean cross-entropy, float32; compiled when asked
        self.alive &= torch.isfinite(loss)
        self.optimizer.zero_grad()
        with flat_backward():
            torch.where(self.alive, loss, 0.0).sum().backward()
        if first:  # the first compiled step traces and generates code (or finds it cached): report that time
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.compile_s = time.perf_counter() - t0
        # a finite loss can still give an overflowing gradient: that member diverges before it steps
        self.alive &= self.optimizer.member_grads_finite()
        self.optimizer.zero_member_grads_(self.alive)  # a diverged member's gradient may be NaN: replace it
        torch.mul(self.base_lr, s, out=self._lr)
        self._lr.mul_(self.alive)
        self.optimizer.step()
        return torch.where(self.alive, loss.detach(), 0.0)

    def _normalize(self, x: Tensor) -> Tensor:
        """uint8 images to standardized floats, with the mean and std kept on the device: no host-to-device copy per batch (on CUDA
        that copy, from pageable memory, waits for the stream: a host sync in every step)."""
        dtype = torch.get_default_dtype()
        if getattr(self, "_norm", (None,))[0] != dtype:
            d = self.data
            self._norm = (dtype, torch.tensor(d.mean, device=self.device, dtype=dtype).view(1, -1, 1, 1),
                          torch.tensor(d.std, device=self.device, dtype=dtype).view(1, -1, 1, 1))
        _, m, sd = self._norm
        return (x.to(dtype) / 255.0 - m) / sd  # the arithmetic of data.normalize, bit for bit

    def _batch(self, idx: Tensor, aug_gen) -> tuple[Tensor, Tensor]:
        d = self.data
        x = self._normalize(d.train_x[idx])
        x = augment(x, aug_gen, self.crop_padding, self.flip)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, d.train_y[idx]

    def _per_layer_sq(self, weights) -> Tensor:
        return torch.stack([w.detach().float().pow(2).flatten(1).sum(1) for w in weights])  # (L, K)

    def train_epoch(self) -> list[dict]:
        """One epoch of every member: the shared batches in this epoch's order, a step each (train_step), the
        angular update measured over the last ANGLE_STEPS steps, then the epoch's rows (evaluation, diagnostics)."""
        if self.epoch >= self.config.train.epochs:
            raise RuntimeError(f"the array has trained its {self.config.train.epochs} epochs")
        t0 = time.perf_counter()
        self.model.train()
        order, aug = self._generators(self.epoch)
        perm = torch.randperm(len(self.data.train_y), generator=order).to(self.device)
        first_step = self.epoch * self.steps_per_epoch
        loss_sum = torch.zeros(self.K, device=self.device)
        angles = []
        for i in range(self.steps_per_epoch):
            x, y = self._batch(perm[i * self.batch:(i + 1) * self.batch], aug)
            measure = i >= self.steps_per_epoch - ANGLE_STEPS and self.invariant
            before = [w.detach().clone() for w in self.invariant] if measure else None  # exact: _angles casts
            loss_sum += self.train_step(x, y, self._schedule[first_step + i])
            if measure:
                angles.append(self._angles(before))
        self.epoch += 1
        last = self._multipliers[first_step + self.steps_per_epoch - 1]  # the rows' lr and equilibrium are the last step's
        rows = self._epoch_rows(loss_sum / self.steps_per_epoch, angles, last, time.perf_counter() - t0)
        for k, row in enumerate(rows):
            self.history[k].append(row)
        return rows

    def _angles(self, before: list[Tensor]) -> Tensor:
        """Angle (radians) between each scale-invariant weight before and after the step, mean over layers: (K,).

        θ = 2·asin(‖u₀ − u₁‖/2) on the unit vectors, in float64: accurate to rounding from 1e-7 rad up
        (arccos of a float32 cosine cannot resolve θ ≲ 5e-4 rad, where 1 − cos θ is float32's epsilon).
        Returns float64; the mean over the measured steps stays float64 until the epoch's rows."""
        out = []
        for w0, w1 in zip(before, self.invariant):
            w0, w1 = w0.detach().flatten(1).double(), w1.detach().flatten(1).double()
            u0 = w0 / w0.norm(dim=1, keepdim=True).clamp_min(1e-300)
            u1 = w1 / w1.norm(dim=1, keepdim=True).clamp_min(1e-300)
            out.append(2 * torch.asin(((u0 - u1).norm(dim=1) / 2).clamp(max=1.0)))
        return torch.stack(out).mean(0)

    @torch.no_grad()
    def evaluate(self) -> tuple[Tensor, Tensor]:
        """Test loss and test error per member, shape (K,) each."""
        self.model.eval()
        d, bs = self.data, resolve_eval_batch_size(self.config.train.eval_batch_size, self.device)
        loss = torch.zeros(self.K, device=self.device)
        wrong = torch.zeros(self.K, device=self.device)
        for i in range(0, len(d.test_y), bs):
            x = self._normalize(d.test_x[i:i + bs])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = d.test_y[i:i + bs]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(x).float()                      # (N, K, classes)
            loss += F.cross_entropy(logits.permute(0, 2, 1), y[:, None].expand(-1, self.K), reduction="none").sum(0)
            wrong += (logits.argmax(-1) != y[:, None]).sum(0)
        n = len(d.test_y)
        return loss / n, wrong / n

    @torch.no_grad()
    def _epoch_rows(self, train_loss: Tensor, angles: list[Tensor], s: float, epoch_time: float) -> list[dict]:
        test_loss, test_error = self.evaluate()
        sq = self._per_layer_sq(self.decayed).sum(0) if self.decayed else torch.zeros(self.K, device=self.device)
        lr_now = self.base_lr * s
        eff = (lr_now / self._per_layer_sq(self.invariant)).mean(0) if self.invariant else torch.full_like(lr_now, math.nan)
        angle = torch.stack(angles).mean(0) if angles else torch.full_like(lr_now, math.nan)
        self.elapsed += epoch_time
        cols = {"train_loss": train_loss, "test_loss": test_loss, "test_error": test_error,
                "weight_norm": sq.sqrt(), "effective_lr": eff, "angular_update": angle, "lr": lr_now,
                **self._diagnostics(lr_now, s)}
        cols = {k: v.float().cpu().tolist() for k, v in cols.items()}  # the one host sync of the epoch
        last = self.epoch == self.config.train.epochs and self.sqrt_v_sum is not None
        channels = diag.channel_records(self.decayed, [v / self.sqrt_v_epochs for v in self.sqrt_v_sum]) if last else None
        alive = self.alive.cpu().tolist()
        rows, ended_at = [], time.time()  # when the epoch ended: MLflow's time axis (tracking.py)
        for k in range(self.K):
            row = {"epoch": self.epoch, **{name: cols[name][k] for name in cols}, "epoch_time": epoch_time,
                   "wall_time": self.elapsed, "diverged": 0.0 if alive[k] else 1.0, "ended_at": ended_at}
            if not alive[k]:  # the weights are frozen at their last finite values; the losses are not defined
                row.update(train_loss=math.nan, test_loss=math.nan, test_error=math.nan)
            elif channels is not None:
                row[CHANNELS] = channels[k]
            rows.append(row)
        return rows

    @torch.no_grad()
    def _diagnostics(self, lr_now: Tensor, s: float) -> dict[str, Tensor]:
        """The epoch's decay diagnostics (study/diagnostics.py), per member: the equilibrium angular update and
        the output layer's norm always; for an optimizer with a preconditioner (its registry entry says so: Adam,
        Adagrad, RMSprop) also the spread of the per-weight decay rate and the rank correlation of channel norms with their mean √v̂ so far."""
        m = self.members[0]
        opts = m.optimizer_kwargs()
        out = {"angular_equilibrium": diag.equilibrium_angle(m.optimizer, m.decay, lr_now, s, self.weight_decay,
                                                              opts.get("momentum", 0.0), (opts.get("betas") or (0.9,))[0],
                                                              bool(opts.get("nesterov"))),
               "head_norm": self.model.head.weight.detach().float().flatten(1).norm(dim=1)}
        if diag.has_preconditioner(m.optimizer) and self.decayed:
            out.update(self._preconditioner_diagnostics(m, opts, lr_now, s))
        dead = torch.full_like(lr_now, math.nan)   # a diverged member's weights are frozen: nothing to diagnose
        return {k: torch.where(self.alive, v, dead) for k, v in out.items()}

    def _preconditioner_diagnostics(self, m: MemberSpec, opts: dict, lr_now: Tensor, s: float) -> dict[str, Tensor]:
        """The spread of the per-weight decay rate, and the norm-vs-√v̂ correlation with √v̂ averaged over the
        epochs' ends so far (the running sum is part of the checkpoint)."""
        out = {}
        rate = self.weight_decay * s if m.decay == "independent" else lr_now * self.weight_decay
        states = [self.optimizer.state.get(p, {}) for p in self.decayed]
        out["decay_spread"] = diag.decay_spread([diag.decay_rates(m.optimizer, m.decay, rate, st, opts) for st in states])
        roots = [diag.channel_sqrt_v(m.optimizer, st, opts) for st in states]
        if all(r is not None for r in roots):
            self.sqrt_v_sum = roots if self.sqrt_v_sum is None else [a + r for a, r in zip(self.sqrt_v_sum, roots)]
            self.sqrt_v_epochs += 1
        out["norm_sqrt_v_corr"] = (torch.full_like(lr_now, math.nan) if self.sqrt_v_sum is None else
                                   diag.norm_vs_sqrt_v(self.decayed, [v / self.sqrt_v_epochs for v in self.sqrt_v_sum]))
        return out

    def run(self, report: Callable[[int, list[dict]], None] | None = None) -> list[dict]:
        """Train the remaining epochs; return one result per member: its settings, final metrics and history."""
        while self.epoch < self.config.train.epochs:
            rows = self.train_epoch()
            if report is not None:
                report(self.epoch, rows)
        return self.results()

    def results(self) -> list[dict]:
        out = []
        for m, hist in zip(self.members, self.history):
            out.append({"optimizer": m.optimizer, "decay": m.decay, "lr": m.lr, "weight_decay": m.weight_decay,
                        "seed": m.seed, "final": final_metrics(hist), "history": hist})
        return out


def train_arrays(spec, arrays: list[list[MemberSpec]], data: Dataset, device: torch.device,
                 log: Callable[..., None] = print) -> list[dict]:
    """`study train`'s loop: each array trained in this process, one after another, with its settings and a
    table row per member and epoch written by `log`; returns every member's result (ArrayTrainer.run)."""
    torch.manual_seed(spec.train.seed)
    results = []
    for i, array in enumerate(arrays, 1):
        trainer = ArrayTrainer(array, data, ArrayConfig(spec.model, spec.train, spec.data), device)
        c, st = trainer.decay_counts, trainer.settings()
        log(f"array {i}/{len(arrays)}: {array[0].arm}, {len(array)} members; decays {c['decayed_tensors']} "
            f"tensors ({c['decayed_params']} params), never {c['no_decay_tensors']} ({c['no_decay_params']}); "
            f"{st['precision']}, channels_last={st['channels_last']}, cudnn_benchmark={st['cudnn_benchmark']}, conv={st['conv']}, "
            f"compile={st['compile']}, cuda_graph={st['cuda_graph']}")
        log(f"{'epoch':>5} {'member':>6} {'lr':>9} {'wd':>9} {'seed':>4} {'train_loss':>10} {'test_err':>8} "
            f"{'|w|':>8} {'angle':>8} {'time':>6}")

        def report(epoch, rows, array=array):
            for k, (m, r) in enumerate(zip(array, rows)):
                flag = " diverged" if r["diverged"] else ""
                log(f"{epoch:>5} {k:>6} {shown(m.lr):>9} {shown(m.weight_decay):>9} {m.seed:>4} {r['train_loss']:>10.4f} "
                    f"{r['test_error']:>8.4f} {r['weight_norm']:>8.2f} {r['angular_update']:>8.4f} "
                    f"{r['wall_time']:>6.1f}{flag}", flush=True)

        results.extend(trainer.run(report))
        if trainer.compiled:
            log(f"array {i}/{len(arrays)}: first compiled step (tracing and code generation, or a cache hit) "
                f"took {trainer.compile_s:.1f} s", flush=True)
    return results
