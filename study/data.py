"""Datasets as uint8 tensors (N, C, H, W), and augmentation done on the training device per batch.

Owns loading, the on-disk cache of decoded images, and normalization. Pure torch/numpy: no Ray,
Optuna or MLflow. Sources: `digits` (scikit-learn, offline, the CPU default), `cifar10`/`cifar100`
(torchvision download), `parquet` (CIFAR-10 as JPEG in Parquet, ../shared/data/cifar10 layout), and
`synthetic` (random tensors, for benchmarks).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATASETS = ("digits", "cifar10", "cifar100", "parquet", "synthetic")

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


class DataError(ValueError):
    """A dataset cannot be loaded as configured; the message names the field and the value."""


@dataclass
class Dataset:
    name: str
    train_x: Tensor  # uint8 (N, C, H, W)
    train_y: Tensor  # int64 (N,)
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: tuple
    std: tuple

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    def to(self, device) -> "Dataset":
        return Dataset(self.name, self.train_x.to(device), self.train_y.to(device), self.test_x.to(device),
                       self.test_y.to(device), self.num_classes, self.mean, self.std)


def cache_dir() -> Path:
    return Path(os.environ.get("STUDY_CACHE", Path.home() / ".cache" / "study")).expanduser().resolve()


def _cached(key: str, build) -> dict:
    """Decoded arrays cached as .npz under cache_dir(), so the second run does not decode again."""
    path = cache_dir() / f"{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return arrays


def _digits() -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 0..16 -> 0..255, (N, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=360, random_state=0, stratify=d.target)
    return dict(train_x=xtr, train_y=ytr.astype(np.int64), test_x=xte, test_y=yte.astype(np.int64))


def _decode_parquet(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq
    from torchvision.io import decode_jpeg

    try:
        table = pq.read_table(path, columns=["image", "label"])
    except Exception as e:  # pyarrow raises several types for a corrupt or foreign file
        raise DataError(f"invalid data.path: cannot read {path} as Parquet with columns image, label "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    images = table.column("image").to_pylist()
    labels = np.asarray(table.column("label").to_numpy(), dtype=np.int64)
    decoded = decode_jpeg([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in images])
    return torch.stack(decoded).numpy(), labels


def _parquet(root: Path) -> dict:
    out = {}
    for split in ("train", "test"):
        out[f"{split}_x"], out[f"{split}_y"] = _decode_parquet(root / f"{split}.parquet")
    return out


def _torchvision_cifar(name: str, root: Path) -> dict:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    out = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = cls(str(root), train=train, download=True)
        except Exception as e:
            raise DataError(f"invalid data.path: cannot find or download {name} under {root} "
                            f"({type(e).__name__}); put the extracted python archive "
                            f"({'cifar-10-batches-py' if name == 'cifar10' else 'cifar-100-python'}) there, "
                            f"or use dataset: parquet with a path") from None
        out[f"{split}_x"] = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
        out[f"{split}_y"] = np.asarray(ds.targets, dtype=np.int64)
    return out


def _file_key(*paths: Path) -> str:
    h = hashlib.sha1()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load_dataset(name: str, path=None, train_subset=None, test_subset=None, synthetic_size=(2048, 512), image_size=32,
                 num_classes=10) -> Dataset:
    """Load `name` as uint8 tensors on the CPU. `train_subset` keeps the first n of a fixed shuffle.
    `cifar10` with a path holding train.parquet reads the Parquet layout; otherwise torchvision's files."""
    if name not in DATASETS:
        raise DataError(f"invalid data.dataset: must be one of {', '.join(DATASETS)}, but got dataset={name!r}")
    mean, std, classes = CIFAR10_MEAN, CIFAR10_STD, 10
    if name == "digits":
        arrays = _cached("digits-v1", _digits)
        mean, std = (0.3,), (0.4,)  # pixel statistics of digits, scaled to [0, 1]
    elif name == "parquet":
        if path is None:
            raise DataError("invalid data.path: dataset parquet needs a path to a folder holding "
                            "train.parquet and test.parquet, but got path=None")
        root = Path(path).expanduser().resolve()
        files = [root / "train.parquet", root / "test.parquet"]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"invalid data.path: {missing[0]} does not exist (path={path})")
        arrays = _cached(f"parquet-{_file_key(*files)}", lambda: _parquet(root))
    elif name == "cifar10" and path and (Path(path).expanduser() / "train.parquet").is_file():
        return load_dataset("parquet", path, train_subset, test_subset)  # CIFAR-10 as JPEG in Parquet
    elif name in ("cifar10", "cifar100"):
        root = Path(path).expanduser().resolve() if path else cache_dir() / "torchvision"
        arrays = _cached(f"{name}-{hashlib.sha1(str(root).encode()).hexdigest()[:12]}",
                         lambda: _torchvision_cifar(name, root))
        if name == "cifar100":
            mean, std, classes = CIFAR100_MEAN, CIFAR100_STD, 100
    else:  # synthetic: random images and labels, fixed by a seed; for throughput benchmarks
        g = np.random.default_rng(0)
        n_train, n_test = synthetic_size
        arrays = {f"{s}_x": g.integers(0, 256, (n, 3, image_size, image_size), dtype=np.uint8)
                  for s, n in (("train", n_train), ("test", n_test))}
        arrays.update({f"{s}_y": g.integers(0, num_classes, n).astype(np.int64)
                       for s, n in (("train", n_train), ("test", n_test))})
        mean, std, classes = (0.5, 0.5, 0.5), (0.29, 0.29, 0.29), num_classes
    split = {}
    for s, n in (("train", train_subset), ("test", test_subset)):
        x, y = arrays[f"{s}_x"], arrays[f"{s}_y"]
        if n is not None:
            if not 0 < n <= len(x):
                raise DataError(f"invalid data.{s}_subset: must lie in [1, {len(x)}] for {name}, "
                                f"but got {s}_subset={n}")
            keep = np.random.default_rng(0).permutation(len(x))[:n]
            x, y = x[keep], y[keep]
        split[s] = (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, dtype=np.int64)))
    return Dataset(name, *split["train"], *split["test"], classes, tuple(mean), tuple(std))


def normalize(x: Tensor, mean, std, dtype=torch.float32) -> Tensor:
    """uint8 (N, C, H, W) -> float, scaled to [0, 1] then standardized per channel."""
    m = torch.tensor(mean, device=x.device, dtype=dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=dtype).view(1, -1, 1, 1)
    return (x.to(dtype) / 255.0 - m) / s


def augment(x: Tensor, gen: torch.Generator, crop_padding: int = 0, flip: bool = False) -> Tensor:
    """Random crop with zero padding and random horizontal flip, per image, on x's device.

    x: float (N, C, H, W), already normalized (so the padding is the mean colour). `gen` lives on x's device.
    """
    n, c, h, w = x.shape
    if crop_padding > 0:
        p = crop_padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), device=x.device, generator=gen)
        dx = torch.randint(0, 2 * p + 1, (n,), device=x.device, generator=gen)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
        idx_n = torch.arange(n, device=x.device)[:, None, None, None]
        idx_c = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[idx_n, idx_c, rows, cols]
    if flip:
        mask = torch.rand(n, device=x.device, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def train_size(name: str, path=None, train_subset=None, synthetic_train=2048) -> int:
    """Number of training images, without decoding them (for checks that run before anything starts)."""
    if name == "digits":
        n = 1437
    elif name == "synthetic":
        n = synthetic_train
    elif name == "parquet" or (name == "cifar10" and path and (Path(path).expanduser() / "train.parquet").is_file()):
        import pyarrow.parquet as pq
        rows = {}
        for split in ("train", "test"):  # read both footers: a corrupt file stops the run before it starts
            f = Path(path).expanduser() / f"{split}.parquet"
            try:
                meta = pq.ParquetFile(f)
                rows[split] = meta.metadata.num_rows
                names = set(meta.schema_arrow.names)
            except Exception as e:
                raise DataError(f"invalid data.path: cannot read {f} as Parquet "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
            if not {"image", "label"} <= names:
                raise DataError(f"invalid data.path: {f} lacks the columns image, label (has {sorted(names)})")
        n = rows["train"]
    else:
        n = 50_000
    return min(n, train_subset) if train_subset else n


def load_spec_data(d) -> Dataset:
    """The dataset a spec's `data` section (a DataSpec) names."""
    return load_dataset(d.dataset, d.path, d.train_subset, d.test_subset, (d.synthetic_train, d.synthetic_test))


def spec_train_size(d) -> int:
    """Training images of a spec's `data` section, read from headers only (no decoding)."""
    return train_size(d.dataset, d.path, d.train_subset, d.synthetic_train)
