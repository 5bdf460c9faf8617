"""The member convolutions' formulations (study/models.py): each equals the grouped F.conv2d in values and
gradients for every layer shape of ResNet-20, in both memory formats; `train.conv` and its `auto` table."""

import json

import pytest
import torch
import torch.nn.functional as F

from study.data import load_dataset
from study.models import CONV_FORMULATIONS, build_model, conv_bmm


def _digits():
    return load_dataset("digits", train_subset=64, test_subset=64)

# ResNet-20's member convolutions on CIFAR-10 (cin, cout, stride, input side), each distinct shape once
RESNET20 = [(16, 16, 1, 32), (16, 32, 2, 32), (32, 32, 1, 16), (32, 64, 2, 16), (64, 64, 1, 8)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("cin,cout,stride,side", RESNET20, ids=[f"{a}>{b}s{s}@{h}" for a, b, s, h in RESNET20])
def test_bmm_equals_the_grouped_convolution_in_values_and_gradients(cin, cout, stride, side, channels_last):
    K, n = 3, 2
    g = torch.Generator().manual_seed(cin + cout + stride)
    x = torch.randn(n, K * cin, side, side, generator=g, dtype=torch.float64, requires_grad=True)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    w = torch.randn(K, cout, cin, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(xin, w.reshape(K * cout, cin, 3, 3), None, stride, 1, groups=K)
    got = conv_bmm(xin, w, stride, 1)
    assert got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last  # the layout stays the input's
    up = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(ref, (x, w), up), torch.autograd.grad(got, (x, w), up)):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_a_whole_array_is_the_same_model_whatever_its_convolutions(channels_last):
    """resnet20, K = 2, float64: logits and every parameter's gradient agree between grouped, bmm and a per-layer
    mix (the stem, whose members share one input, is one ordinary convolution in all)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    outs = []
    for choice in ("grouped", "bmm", "mixed"):
        net = build_model("resnet20", members=2, seeds=[0, 1]).double().set_memory_format(channels_last)
        keys = list(dict.fromkeys(k for k, _ in net.member_convs(32)))  # 18 convolutions of 5 shapes
        assert len(net.member_convs(32)) == 18 and keys == [f"{a}>{b} k3 s{s} @{h}" for a, b, s, h in RESNET20]
        chosen = net.set_conv({k: CONV_FORMULATIONS[i % 2] for i, k in enumerate(keys)} if choice == "mixed" else choice)
        assert list(chosen) == keys and (choice != "mixed" or set(chosen.values()) == set(CONV_FORMULATIONS))
        xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        out = net(xin)
        out.square().sum().backward()
        outs.append((out.detach(), [p.grad for p in net.parameters()]))
    for out, grads in outs[1:]:
        assert torch.allclose(out, outs[0][0], rtol=1e-10, atol=1e-10)
        assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-10) for a, b in zip(grads, outs[0][1]))


def test_auto_reads_the_measured_table_of_this_device_at_the_nearest_k(tmp_path, monkeypatch):
    from study.engine import ArrayConfig, ArrayTrainer, resolve_conv
    from study.spec import DataSpec, MemberSpec, ModelSpec, TrainSpec

    monkeypatch.delenv("STUDY_CONV_TABLE", raising=False)
    assert resolve_conv("auto", torch.device("cpu"), 4) == "grouped"  # no table: the stated default
    table = {"cpu": {"2": {"16>16 k3 s1 @8": "bmm"}, "64": {"16>16 k3 s1 @8": "grouped", "16>32 k3 s2 @8": "bmm"}},
             "Some GPU": {"4": {"16>16 k3 s1 @8": "bmm"}}}
    (tmp_path / "table.json").write_text(json.dumps(table))
    monkeypatch.setenv("STUDY_CONV_TABLE", str(tmp_path / "table.json"))
    assert resolve_conv("auto", torch.device("cpu"), 3) == table["cpu"]["2"]       # 3 is nearer 2 than 64
    assert resolve_conv("auto", torch.device("cpu"), 40) == table["cpu"]["64"]
    assert resolve_conv("bmm", torch.device("cpu"), 3) == "bmm"                    # a setting is not looked up
    members = [MemberSpec("sgd", "coupled", 0.1, 1e-3, seed=k) for k in range(3)]
    config = ArrayConfig(ModelSpec("resnet8"), TrainSpec(epochs=1, batch_size=32, conv="auto"), DataSpec())
    tr = ArrayTrainer(members, _digits(), config, "cpu")
    assert tr.conv == {"16>16 k3 s1 @8": "bmm", "16>32 k3 s2 @8": "grouped", "32>32 k3 s1 @4": "grouped",
                       "32>64 k3 s2 @4": "grouped", "64>64 k3 s1 @2": "grouped"}
    assert tr.settings()["conv"] == "1 bmm, 4 grouped"
    (tmp_path / "table.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid STUDY_CONV_TABLE"):
        resolve_conv("auto", torch.device("cpu"), 3)


def test_training_with_either_formulation_gives_the_same_members(monkeypatch):
    """Three steps of an SGD array: bmm and grouped agree to float32 rounding (they sum in another order)."""
    from study.engine import ArrayConfig, ArrayTrainer
    from study.spec import DataSpec, MemberSpec, ModelSpec, TrainSpec

    monkeypatch.delenv("STUDY_CONV_TABLE", raising=False)
    members = [MemberSpec("sgd", "coupled", 0.05, 1e-3, seed=k) for k in range(2)]
    losses = {}
    for conv in CONV_FORMULATIONS:
        tr = ArrayTrainer(members, _digits(), ArrayConfig(ModelSpec("resnet8"), TrainSpec(epochs=1, batch_size=32, conv=conv),
                                                          DataSpec()), "cpu")
        x, y = tr._batch(torch.arange(32), torch.Generator().manual_seed(0))
        losses[conv] = [tr.train_step(x, y, tr.one) for _ in range(3)]
    for a, b in zip(losses["grouped"], losses["bmm"]):
        assert torch.allclose(a, b, rtol=1e-4)


def test_every_layer_is_keyed_by_the_size_it_reads_in_both_families():
    """The table's keys: a block's conv1 and projection read the block's input, its conv2 conv1's output."""
    keys = [k for k, _ in build_model("preact_resnet18", members=1).member_convs(32)]
    assert keys[4:7] == ["64>128 k3 s2 @32", "128>128 k3 s1 @16", "64>128 k1 s2 @32"]  # stage 2's first block
    assert keys[-1] == "512>512 k3 s1 @4" and len(keys) == 19
    assert [k for k, _ in build_model("resnet20", members=1).member_convs(32)][-1] == "64>64 k3 s1 @8"
