"""Datasets as uint8 tensors (N, C, H, W), and augmentation done on the training device per batch.

Owns the tensors and normalization (the on-disk cache of decoded images is study/datasets.py's). Pure torch/numpy: no Ray,
Optuna or MLflow. Which datasets exist and how each is read is study/datasets.py's registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .datasets import DATASETS, DataError, cache_dir, cached, dataset_entry, split_sizes  # noqa: F401  (re-exported)


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
    padded_crop: bool = False  # the dataset's default augmentation: 4-pixel padded crop and flip

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    def to(self, device) -> "Dataset":
        return Dataset(self.name, self.train_x.to(device), self.train_y.to(device), self.test_x.to(device),
                       self.test_y.to(device), self.num_classes, self.mean, self.std, self.padded_crop)


def load_spec_data(d) -> Dataset:
    """The dataset a spec's `data` section (a DataSpec) names, as uint8 tensors on the CPU. A subset keeps
    the first n images of a fixed shuffle."""
    entry = dataset_entry(d.dataset)
    split_sizes(d)  # the same checks as before a run: a bad subset or path is named, not a traceback
    arrays = cached(entry.cache_key(d), lambda: entry.load(d))
    classes = int(arrays.get("classes", entry.classes or 0))
    split = {}
    for s, n in (("train", d.train_subset), ("test", d.test_subset)):
        x, y = arrays[f"{s}_x"], arrays[f"{s}_y"]
        if n is not None:
            keep = np.random.default_rng(0).permutation(len(x))[:n]
            x, y = x[keep], y[keep]
        split[s] = (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, dtype=np.int64)))
    mean, std = entry.mean, entry.std
    if mean is None:  # measured on the training images (image folders)
        x = split["train"][0].double() / 255
        mean = tuple(x.mean((0, 2, 3)).tolist())
        std = tuple(x.std((0, 2, 3)).clamp_min(1e-3).tolist())
    return Dataset(d.dataset, *split["train"], *split["test"], classes, tuple(mean), tuple(std), entry.padded_crop)


def load_dataset(name: str, path=None, train_subset=None, test_subset=None, synthetic_size=(2048, 512)) -> Dataset:
    """`load_spec_data` with the data spec's fields as arguments."""
    from .spec import DataSpec

    return load_spec_data(DataSpec(dataset=name, path=None if path is None else str(path), train_subset=train_subset,
                                   test_subset=test_subset, synthetic_train=synthetic_size[0],
                                   synthetic_test=synthetic_size[1]))


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
