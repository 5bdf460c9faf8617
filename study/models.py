"""CIFAR ResNets as member arrays: K models with independent weights evaluated in one forward pass.

Owns the model zoo. Pure torch: imports no Ray, Optuna or MLflow.
Every parameter has dim 0 = member (shape (K, ...)); activations are laid out as (N, K·C, H, W) and
convolutions are grouped by member (groups=K), so member k only ever touches its own slice. The
stem convolution reads the shared input once (groups=1 with K·C outputs). A model returns logits of
shape (N, K, classes). K = 1 is an ordinary model. Member k is initialised from `seeds[k]` alone, so a
member starts from the same weights whether it is trained alone or inside an array.

Memory format: `set_memory_format(channels_last=True)` stores every conv weight as (K, cout, kh, kw, cin)
memory, exposed as the usual (K, cout, cin, kh, kw) parameter, so that the per-conv (K·cout, cin, kh, kw)
weight has channels-last strides (a view when a member's weights are contiguous, else one copy) and
activations stay channels-last through the network. Values never depend on the layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import CONV_CHOICES, MAX_DEPTH, MODEL_NAMES, model_depth


CONV_FORMULATIONS = tuple(c for c in CONV_CHOICES if c != "auto")  # the same values (tests/test_conv.py)


def conv_bmm(x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    """K convolutions as one batched matrix product on a member-major tensor: each member's input unfolded
    (im2col) into (K, cin·kh·kw, N·L), times its weight (K, cout, cin·kh·kw), folded back to (N, K·cout, H', W').
    Equal to the grouped F.conv2d in values and gradients (rounding aside); a different kernel mix (one batched
    GEMM instead of a grouped convolution), in the input's memory format."""
    K, cout, cin, kh, kw = weight.shape
    n, _, h, w = x.shape
    xm = x.reshape(n, K, cin, h, w).transpose(0, 1).reshape(K * n, cin, h, w)   # member-major
    cols = F.unfold(xm, (kh, kw), padding=padding, stride=stride)               # (K·N, cin·kh·kw, L)
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    cols = cols.view(K, n, cin * kh * kw, ho * wo).transpose(1, 2).reshape(K, cin * kh * kw, n * ho * wo)
    out = torch.bmm(weight.reshape(K, cout, cin * kh * kw), cols)               # (K, cout, N·L)
    out = out.view(K, cout, n, ho, wo).permute(2, 0, 1, 3, 4).reshape(n, K * cout, ho, wo)
    return out.contiguous(memory_format=torch.channels_last) if x.stride(1) == 1 and x.shape[1] > 1 else out


class MemberConv2d(nn.Module):
    """K independent convolutions; weight (K, cout, cin, k, k). `shared_input`: all members read one input.
    `formulation` (CONV_FORMULATIONS): a grouped convolution (groups=K), or conv_bmm; set by
    MemberArrayNet.set_conv. The stem, whose members read one input, is always one ordinary convolution."""

    def __init__(self, members, cin, cout, kernel, stride=1, padding=0, shared_input=False,
                 scale_invariant=True):
        super().__init__()
        self.members, self.stride, self.padding, self.shared_input = members, stride, padding, shared_input
        self.scale_invariant = scale_invariant  # followed directly by batch norm: loss invariant to ‖w‖
        self.channels_last = False  # set by MemberArrayNet.set_memory_format
        self.formulation = "grouped"
        self.weight = nn.Parameter(torch.empty(members, cout, cin, kernel, kernel))

    def shape_key(self, size: int) -> str:
        """The layer's shape as the convolution table (bench/conv_forms.py) names it, on a size×size input:
        cin>cout k3 s1 @32."""
        _, cout, cin, k, _ = self.weight.shape
        return f"{cin}>{cout} k{k} s{self.stride} @{size}"

    def conv_weight(self) -> Tensor:
        """The (K·cout, cin, kh, kw) weight of the grouped convolution, channels-last when the model is."""
        K, cout, cin, kh, kw = self.weight.shape
        if self.channels_last:  # (K, cout, kh, kw, cin) order -> (K·cout, kh, kw, cin) -> channels-last strides
            return self.weight.permute(0, 1, 3, 4, 2).reshape(K * cout, kh, kw, cin).permute(0, 3, 1, 2)
        return self.weight.reshape(K * cout, cin, kh, kw)

    def forward(self, x: Tensor) -> Tensor:
        if self.formulation == "bmm" and not self.shared_input:
            return conv_bmm(x, self.weight, self.stride, self.padding)
        groups = 1 if self.shared_input else self.weight.shape[0]
        return F.conv2d(x, self.conv_weight(), None, self.stride, self.padding, groups=groups)

    def init_member(self, k: int, gen: torch.Generator) -> None:
        nn.init.kaiming_normal_(self.weight.data[k], mode="fan_out", nonlinearity="relu", generator=gen)


class MemberBatchNorm2d(nn.Module):
    """K independent batch norms over (N, K·C, H, W): own scale, shift and running statistics per member."""

    def __init__(self, members, channels, momentum=0.1, eps=1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(members, channels))
        self.bias = nn.Parameter(torch.zeros(members, channels))
        self.register_buffer("running_mean", torch.zeros(members, channels))
        self.register_buffer("running_var", torch.ones(members, channels))

    def forward(self, x: Tensor) -> Tensor:
        # running statistics are views (batch norm updates them in place); the affine parameters may be
        # strided slices of an optimizer's flat buffer, so they are reshaped (a copy of K·C values at most)
        return F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1), self.weight.reshape(-1),
                            self.bias.reshape(-1), self.training, self.momentum, self.eps)

    def init_member(self, k: int, gen: torch.Generator) -> None:
        self.weight.data[k].fill_(1.0)
        self.bias.data[k].zero_()
        self.running_mean[k].zero_()
        self.running_var[k].fill_(1.0)


class MemberLinear(nn.Module):
    """K independent linear maps: (N, K, cin) -> (N, K, cout)."""

    def __init__(self, members, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, cout, cin))
        self.bias = nn.Parameter(torch.empty(members, cout))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("nki,koi->nko", x, self.weight) + self.bias

    def init_member(self, k: int, gen: torch.Generator) -> None:
        # torch.nn.Linear's default: kaiming_uniform(a=√5) weights, U(±1/√fan_in) bias
        nn.init.kaiming_uniform_(self.weight.data[k], a=math.sqrt(5), generator=gen)
        bound = 1 / math.sqrt(self.weight.shape[2])
        nn.init.uniform_(self.bias.data[k], -bound, bound, generator=gen)


def _member_channels(x: Tensor, members: int) -> Tensor:
    """(N, K·C, H, W) -> (N, K, C, H, W) view."""
    n, kc, h, w = x.shape
    return x.view(n, members, kc // members, h, w)


class BasicBlock(nn.Module):
    """He et al. 2016 CIFAR block: conv-bn-relu-conv-bn + shortcut (option A: subsample, zero-pad channels)."""

    def __init__(self, members, cin, cout, stride):
        super().__init__()
        self.members, self.pad = members, cout - cin
        self.conv1 = MemberConv2d(members, cin, cout, 3, stride, 1)
        self.bn1 = MemberBatchNorm2d(members, cout)
        self.conv2 = MemberConv2d(members, cout, cout, 3, 1, 1)
        self.bn2 = MemberBatchNorm2d(members, cout)
        self.stride = stride

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        channels_last = x.stride(1) == 1 and x.shape[1] > 1
        # subsample. Channels-last: a 1×1 average pooling with the slice's values, whose gradient keeps the layout
        # (the strided slice sends an NCHW gradient into a channels-last network: tests/test_fastpath.py); else
        # the slice itself, a view (the pooling's copy costs a few percent of a CPU step)
        x = F.avg_pool2d(x, 1, self.stride) if channels_last else x[:, :, :: self.stride, :: self.stride]
        left, right = self.pad // 2, self.pad - self.pad // 2
        if channels_last:
            # channels-last: pad each member's channels in (N, H, W, K, C) order, stay channels-last
            n, kc, h, w = x.shape
            y = F.pad(x.permute(0, 2, 3, 1).reshape(n, h, w, self.members, kc // self.members), (left, right))
            return y.reshape(n, h, w, -1).permute(0, 3, 1, 2)
        x = F.pad(_member_channels(x, self.members), (0, 0, 0, 0, left, right))
        return x.flatten(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """He et al. 2016b pre-activation block: bn-relu-conv-bn-relu-conv + shortcut (1×1 conv when shape changes)."""

    def __init__(self, members, cin, cout, stride):
        super().__init__()
        self.bn1 = MemberBatchNorm2d(members, cin)
        self.conv1 = MemberConv2d(members, cin, cout, 3, stride, 1)
        self.bn2 = MemberBatchNorm2d(members, cout)
        self.conv2 = MemberConv2d(members, cout, cout, 3, 1, 1, scale_invariant=False)
        self.proj = (MemberConv2d(members, cin, cout, 1, stride, 0, scale_invariant=False)
                     if stride != 1 or cin != cout else None)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.proj(out) if self.proj is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class MemberArrayNet(nn.Module):
    """Stem, stages of blocks, global pooling, linear head; all as member arrays."""

    def __init__(self, block, stage_blocks, widths, members, num_classes, in_channels, preact, seeds):
        super().__init__()
        if len(seeds) != members:
            raise ValueError(f"invalid seeds: need one seed per member ({members}), but got {len(seeds)}")
        self.members, self.channels_last = members, False
        self.stem = MemberConv2d(members, in_channels, widths[0], 3, 1, 1, shared_input=True,
                                 scale_invariant=not preact)
        self.stem_bn = None if preact else MemberBatchNorm2d(members, widths[0])
        layers, cin = [], widths[0]
        for i, (n, cout) in enumerate(zip(stage_blocks, widths)):
            for j in range(n):
                layers.append(block(members, cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.final_bn = MemberBatchNorm2d(members, cin) if preact else None
        self.head = MemberLinear(members, cin, num_classes)
        self.reset_members(seeds)

    @torch.no_grad()
    def reset_members(self, seeds) -> None:
        """Initialise member k from seeds[k] alone. Called at construction, on the CPU, so the weights do not
        depend on the training device's random number generator."""
        for k, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(int(seed))
            for m in self.modules():
                if hasattr(m, "init_member"):
                    m.init_member(k, gen)

    def forward(self, x: Tensor) -> Tensor:
        out = self.stem(x)
        if self.stem_bn is not None:
            out = F.relu(self.stem_bn(out))
        out = self.layers(out)
        if self.final_bn is not None:
            out = F.relu(self.final_bn(out))
        # (N, K·C): global average pooling; the mean keeps a channels-last gradient, adaptive pooling is the
        # cheaper kernel on contiguous memory (the same values: tests/test_fastpath.py)
        out = out.mean((2, 3)) if self.channels_last else F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.head(out.view(out.shape[0], self.members, -1))  # (N, K, classes)

    @torch.no_grad()
    def set_memory_format(self, channels_last: bool) -> "MemberArrayNet":
        """Lay every conv weight out for channels-last ((K, cout, kh, kw, cin) memory) or back to contiguous.

        The values and the parameter objects stay; only strides change (an optimizer built afterwards keeps
        the layout in its state). Call it before building the optimizer."""
        self.channels_last = channels_last
        for m in self.modules():
            if isinstance(m, MemberConv2d):
                m.channels_last = channels_last
                w = m.weight.data
                m.weight.data = (w.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3) if channels_last
                                 else w.contiguous())
        return self

    def member_convs(self, size: int) -> list[tuple[str, MemberConv2d]]:
        """(shape key, conv) of every member-grouped convolution (not the stem), block by block, for a size×size
        input: a block's conv1 and projection read its input, its conv2 what conv1 made."""
        def after(m: MemberConv2d, s: int) -> int:
            return (s + 2 * m.padding - m.weight.shape[3]) // m.stride + 1

        size, out = after(self.stem, size), []
        for block in self.layers:
            mid = after(block.conv1, size)
            out.append((block.conv1.shape_key(size), block.conv1))
            out.append((block.conv2.shape_key(mid), block.conv2))
            if getattr(block, "proj", None) is not None:
                out.append((block.proj.shape_key(size), block.proj))
            size = after(block.conv2, mid)
        return out

    def set_conv(self, choice, size: int = 32) -> dict[str, str]:
        """Each member convolution's formulation: one of CONV_FORMULATIONS for all, or a dict shape key ->
        formulation (the table `auto` reads; a shape it lacks stays grouped). Returns shape key -> formulation."""
        chosen = {}
        for key, m in self.member_convs(size):
            f = choice if isinstance(choice, str) else choice.get(key, "grouped")
            if f not in CONV_FORMULATIONS:
                raise ValueError(f"invalid conv: one of {', '.join(CONV_FORMULATIONS)}, but got conv={f!r} ({key})")
            m.formulation = chosen[key] = f
        return chosen

    def to(self, *args, **kwargs):
        """nn.Module.to; memory_format=torch.channels_last (or contiguous_format) goes to set_memory_format,
        since the 5-D member weights have no channels-last format of their own."""
        fmt = kwargs.pop("memory_format", None)
        if fmt is not None:
            if fmt not in (torch.channels_last, torch.contiguous_format):
                raise ValueError(f"invalid memory_format: a member array is channels_last or contiguous_format, "
                                 f"but got memory_format={fmt}")
            self.set_memory_format(fmt == torch.channels_last)
        return super().to(*args, **kwargs) if args or kwargs else self

    def scale_invariant_weights(self) -> list[Tensor]:
        """Conv weights followed directly by batch norm: the loss does not change when they are scaled."""
        return [m.weight for m in self.modules() if isinstance(m, MemberConv2d) and m.scale_invariant]


def resnet_cifar(depth: int, members=1, num_classes=10, in_channels=3, width=1, seeds=None) -> MemberArrayNet:
    """He et al. 2016 CIFAR ResNet of depth 6n+2 (20, 32, 44, 56, 110, and 8 for CPU work); width multiplies 16/32/64."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"invalid depth: a CIFAR ResNet has depth 6n+2 (8, 20, 32, 44, 56, 110), but got depth={depth}")
    n = (depth - 2) // 6
    widths = [16 * width, 32 * width, 64 * width]
    return MemberArrayNet(BasicBlock, [n, n, n], widths, members, num_classes, in_channels, False,
                          seeds if seeds is not None else list(range(members)))


def preact_resnet18(members=1, num_classes=10, in_channels=3, width=1, seeds=None) -> MemberArrayNet:
    """Pre-activation ResNet-18 (He et al. 2016b; 64/128/256/512 channels × width)."""
    widths = [64 * width, 128 * width, 256 * width, 512 * width]
    return MemberArrayNet(PreActBlock, [2, 2, 2, 2], widths, members, num_classes, in_channels, True,
                          seeds if seeds is not None else list(range(members)))


def build_model(name: str, members=1, num_classes=10, in_channels=3, width=1, seeds=None) -> MemberArrayNet:
    if name == "preact_resnet18":
        return preact_resnet18(members, num_classes, in_channels, width, seeds)
    if model_depth(name) is None:
        raise ValueError(f"invalid model: must be resnet of depth 6n+2 up to {MAX_DEPTH} ({', '.join(MODEL_NAMES[:-1])}, …) "
                         f"or preact_resnet18, but got model={name!r}")
    return resnet_cifar(model_depth(name), members, num_classes, in_channels, width, seeds)
