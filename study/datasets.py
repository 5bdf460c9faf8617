"""The datasets a spec may name: one registry entry each, with one signature.

Torch-free (numpy, pyarrow, PIL, scikit-learn, all imported lazily), so specs are checked without
loading torch. An entry says how to read the split sizes without decoding (`sizes`, used by checks
that run before anything starts), how to decode the images (`load`, numpy uint8 (N, C, H, W) and
int64 labels), its classes, channels, normalization and default augmentation. study/data.py turns
what `load` returns into tensors and caches it. Adding a dataset (SVHN, say) is one entry here.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import types
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataError(ValueError):
    """A dataset cannot be loaded as configured; the message names the field and the value."""


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    sizes: Callable        # (data spec) -> (train images, test images), without decoding
    load: Callable         # (data spec) -> {"train_x", "train_y", "test_x", "test_y"} numpy arrays, + optional "classes"
    cache_key: Callable    # (data spec) -> a key for the decoded-image cache, or None (not worth caching)
    classes: int | None    # None: read from the data
    mean: tuple | None     # per-channel pixel mean in [0, 1]; None: measured on the training images
    std: tuple | None
    padded_crop: bool      # default augmentation: random crop with 4 pixels of zero padding, random flip
    needs_path: bool = False
    takes_path: bool = True         # False: data.path means nothing to this dataset (refused if given)
    source: str = ""                # where a dataset that takes no path comes from (for that refusal)


def cache_dir() -> Path:
    """Where decoded datasets are cached: STUDY_CACHE, else ~/.cache/study."""
    return Path(os.environ.get("STUDY_CACHE", Path.home() / ".cache" / "study")).expanduser().resolve()


# --------------------------------------------------------------------------- sources


def cached(key: str | None, build) -> dict:
    """Decoded arrays cached as .npz under cache_dir(), so the second run does not decode again. A cache file
    that cannot be read (truncated, overwritten, another format) is named in a warning and rebuilt; a cache
    that cannot be written is named and skipped: the cache only saves time, it never decides what is trained."""
    if key is None:
        return build()
    path = cache_dir() / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            if {"train_x", "train_y", "test_x", "test_y"} <= set(arrays):
                return arrays
            why = "it lacks the arrays train_x, train_y, test_x, test_y"
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            why = f"{type(e).__name__}: {str(e)[:80]}"
        print(f"warning: the dataset cache {path} cannot be read ({why}); decoding the dataset again", file=sys.stderr)
    arrays = build()
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    except OSError as e:
        print(f"warning: cannot write the dataset cache {path} ({e.strerror or e}); going on without it", file=sys.stderr)
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
    return arrays

def _digits(d) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    dd = load_digits()
    x = np.round(dd.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 0..16 -> 0..255, (N, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, dd.target, test_size=360, random_state=0, stratify=dd.target)
    return dict(train_x=xtr, train_y=ytr.astype(np.int64), test_x=xte, test_y=yte.astype(np.int64))


def _parquet_root(d) -> Path:
    if d.path is None:
        raise DataError(f"invalid data.path: dataset {d.dataset} needs a folder holding train.parquet and "
                        f"test.parquet, but got path=None")
    return Path(d.path).expanduser().resolve()


def _parquet_sizes(d) -> tuple[int, int]:
    import pyarrow.parquet as pq

    rows = []
    for split in ("train", "test"):  # both footers: a corrupt file stops the run before it starts
        f = _parquet_root(d) / f"{split}.parquet"
        if not f.is_file():
            raise DataError(f"invalid data.path: {f} does not exist (path={d.path!r})")
        try:
            meta = pq.ParquetFile(f)
            names = set(meta.schema_arrow.names)
            rows.append(meta.metadata.num_rows)
        except Exception as e:  # pyarrow raises several types for a corrupt or foreign file
            raise DataError(f"invalid data.path: cannot read {f} as Parquet "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
        if not {"image", "label"} <= names:
            raise DataError(f"invalid data.path: {f} lacks the columns image, label (has {sorted(names)[:8]})")
    return rows[0], rows[1]


def _decode_parquet(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq
    import torch
    from torchvision.io import decode_jpeg

    table = pq.read_table(path, columns=["image", "label"])
    images = table.column("image").to_pylist()
    labels = np.asarray(table.column("label").to_numpy(), dtype=np.int64)
    try:
        decoded = decode_jpeg([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in images])
    except RuntimeError as e:
        raise DataError(f"invalid data.path: {path} holds an image that is not a JPEG ({str(e).splitlines()[0][:120]})") from None
    return torch.stack(decoded).numpy(), labels


def _parquet(d) -> dict:
    root, out = _parquet_root(d), {}
    _parquet_sizes(d)
    for split in ("train", "test"):
        out[f"{split}_x"], out[f"{split}_y"] = _decode_parquet(root / f"{split}.parquet")
    return out


def _file_key(*paths: Path) -> str:
    h = hashlib.sha1()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _has_parquet(d) -> bool:
    return d.path is not None and (Path(d.path).expanduser() / "train.parquet").is_file()


def _torchvision_cifar(d) -> dict:
    if _has_parquet(d):  # CIFAR-10 as JPEG in Parquet (train.parquet and test.parquet: image bytes and label)
        return _parquet(d)
    from torchvision import datasets

    root = _cifar_root(d)
    cls = datasets.CIFAR10 if d.dataset == "cifar10" else datasets.CIFAR100
    out = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = cls(str(root), train=train, download=True)
        except Exception as e:
            raise DataError(f"invalid data.path: cannot find or download {d.dataset} under {root} "
                            f"({type(e).__name__}); put the extracted python archive "
                            f"({'cifar-10-batches-py' if d.dataset == 'cifar10' else 'cifar-100-python'}) there, "
                            f"or a folder with train.parquet and test.parquet") from None
        out[f"{split}_x"] = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
        out[f"{split}_y"] = np.asarray(ds.targets, dtype=np.int64)
    return out


def _cifar_root(d) -> Path:
    return Path(d.path).expanduser().resolve() if d.path else cache_dir() / "torchvision"


def _cifar_sizes(d) -> tuple[int, int]:
    if d.path is not None and not Path(d.path).expanduser().is_dir():
        raise DataError(f"invalid data.path: folder {d.path} does not exist (path={d.path!r})")
    if _has_parquet(d):
        return _parquet_sizes(d)
    root, archive = _cifar_root(d), "cifar-10-batches-py" if d.dataset == "cifar10" else "cifar-100-python"
    if not (root / archive).is_dir() and not (cache_dir() / f"{_cifar_key(d)}.npz").is_file():
        # found here, before a study starts, not by every trial (which would each try to download it)
        raise DataError(f"invalid data.path: no {d.dataset} under {root}; put the extracted python archive "
                        f"({archive}) there, or give data.path: a folder with train.parquet and test.parquet")
    return 50_000, 10_000


def _cifar_key(d) -> str:
    if _has_parquet(d):
        root = _parquet_root(d)
        return f"parquet-{_file_key(root / 'train.parquet', root / 'test.parquet')}"
    return f"{d.dataset}-{hashlib.sha1(str(_cifar_root(d)).encode()).hexdigest()[:12]}"


def _synthetic(d) -> dict:
    """Random images and labels, fixed by a seed: for throughput benchmarks."""
    g = np.random.default_rng(0)
    out = {f"{s}_x": g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
           for s, n in (("train", d.synthetic_train), ("test", d.synthetic_test))}
    out.update({f"{s}_y": g.integers(0, 10, n).astype(np.int64)
                for s, n in (("train", d.synthetic_train), ("test", d.synthetic_test))})
    return out


# --------------------------------------------------------------------------- image folders

def _folder_split(d, split: str) -> tuple[Path, list[str]]:
    """torchvision ImageFolder layout: path/{train,test}/<class>/<image>; classes are the sorted folder names."""
    if d.path is None:
        raise DataError("invalid data.path: dataset imagefolder needs a folder holding train/ and test/, "
                        "each with one folder of images per class, but got path=None")
    root = Path(d.path).expanduser().resolve() / split
    if not root.is_dir():
        raise DataError(f"invalid data.path: {root} does not exist (imagefolder needs train/ and test/ under path={d.path!r})")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"invalid data.path: {root} needs at least two class folders, but has {len(classes)}")
    return root, classes


def _folder_files(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    return [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]


def _folder_sizes(d) -> tuple[int, int]:
    (tr, ctr), (te, cte) = _folder_split(d, "train"), _folder_split(d, "test")
    if ctr != cte:
        raise DataError(f"invalid data.path: train/ and test/ of {d.path} have different class folders "
                        f"({ctr[:5]} vs {cte[:5]})")
    sizes = len(_folder_files(tr, ctr)), len(_folder_files(te, cte))
    if min(sizes) == 0:
        raise DataError(f"invalid data.path: {d.path} has no images ({', '.join(IMAGE_SUFFIXES)}) in train/ or test/")
    _decodable_folder(str(d.path), _folder_key(d))
    return sizes


@functools.lru_cache(maxsize=4)
def _decodable_folder(path: str, key: str) -> None:
    """Every image of the folder decoded once, as the trials will (a file that is no image, a truncated one,
    another size): a bad file is refused before a study starts, not in every trial. Once per process for the
    folder's key (its class folders and its files' paths, sizes and modification times), and not at all where the
    decoded-image cache holds that key (written only by a whole decode, `cached`). The check writes no cache:
    `study validate` writes nothing."""
    if not (cache_dir() / f"{key}.npz").is_file():
        _image_folder(types.SimpleNamespace(path=path))


def _image_folder(d) -> dict:
    from PIL import Image, UnidentifiedImageError

    out, shape, mode = {}, None, None
    for split in ("train", "test"):
        root, classes = _folder_split(d, split)
        xs, ys = [], []
        for f, label in _folder_files(root, classes):
            try:
                with Image.open(f) as im:
                    mode = mode or ("L" if im.mode in ("L", "1", "I;16") else "RGB")
                    a = np.asarray(im.convert(mode), dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"invalid data.path: cannot read {f} as an image ({type(e).__name__})") from None
            a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
            if shape is None:
                shape = a.shape
            if a.shape != shape:
                raise DataError(f"invalid data.path: images must all have one size, but {f} is "
                                f"{a.shape[1]}×{a.shape[2]} and the first was {shape[1]}×{shape[2]}")
            xs.append(a)
            ys.append(label)
        out[f"{split}_x"], out[f"{split}_y"] = np.stack(xs), np.asarray(ys, dtype=np.int64)
        out["classes"] = len(classes)
    return out


def _folder_key(d) -> str:
    """The decoded-image cache's key: the class folders (an added empty one renumbers the labels) and every
    image file's path, size and modification time."""
    splits = [_folder_split(d, split) for split in ("train", "test")]
    files = [f for root, classes in splits for f, _ in _folder_files(root, classes)]
    classes = "|".join("/".join(c) for _, c in splits)
    return f"imagefolder-{hashlib.sha1((classes + _file_key(*files)).encode()).hexdigest()[:16]}"


DATASETS: dict[str, DatasetEntry] = {e.name: e for e in (
    DatasetEntry("digits", lambda d: (1437, 360), _digits, lambda d: "digits-v1", 10, (0.3,), (0.4,),
                 padded_crop=False, takes_path=False, source="it ships with scikit-learn"),
    DatasetEntry("cifar10", _cifar_sizes, _torchvision_cifar, _cifar_key, 10, CIFAR10_MEAN, CIFAR10_STD,
                 padded_crop=True),
    DatasetEntry("cifar100", _cifar_sizes, _torchvision_cifar, _cifar_key, 100, CIFAR100_MEAN, CIFAR100_STD,
                 padded_crop=True),
    DatasetEntry("parquet", _parquet_sizes, _parquet, _cifar_key, 10, CIFAR10_MEAN, CIFAR10_STD,
                 padded_crop=True, needs_path=True),
    DatasetEntry("synthetic", lambda d: (d.synthetic_train, d.synthetic_test), _synthetic, lambda d: None, 10,
                 (0.5, 0.5, 0.5), (0.29, 0.29, 0.29), padded_crop=True, takes_path=False,
                 source="its images are generated"),
    DatasetEntry("imagefolder", _folder_sizes, _image_folder, _folder_key, None, None, None,
                 padded_crop=False, needs_path=True),
)}


def image_side(d) -> int:
    """The side of a data spec's (square or not: the shorter side) images, from headers only: 8 for digits,
    32 for the CIFAR files and synthetic images, an image folder's first image (they all share one size)."""
    if d.dataset == "digits":
        return 8
    if d.dataset != "imagefolder":
        return 32
    from PIL import Image

    root, classes = _folder_split(d, "train")
    first = next(f for f, _ in _folder_files(root, classes))  # _folder_sizes found images
    with Image.open(first) as im:
        return min(im.size)


def dataset_entry(name: str) -> DatasetEntry:
    if name not in DATASETS:
        raise DataError(f"invalid data.dataset: must be one of {', '.join(DATASETS)}, but got dataset={name!r}")
    return DATASETS[name]


def split_sizes(d) -> tuple[int, int]:
    """(train, test) images a data spec uses, read from headers only; checks the subsets fit the data and the
    crop padding fits the images."""
    full = dataset_entry(d.dataset).sizes(d)
    side = image_side(d)
    if d.crop_padding is not None and d.crop_padding > side // 2:  # spec.validate bounds it by 16 (CIFAR's half)
        raise DataError(f"invalid data.crop_padding: at most half the image side, {side // 2} pixels for "
                        f"{d.dataset}'s {side}×{side} images (a larger padding makes crops that are mostly "
                        f"padding), but got crop_padding={d.crop_padding}")
    out = []
    for split, n, subset in (("train", full[0], d.train_subset), ("test", full[1], d.test_subset)):
        if subset is not None and not 1 <= subset <= n:
            raise DataError(f"invalid data.{split}_subset: must lie in [1, {n}] for {d.dataset}, "
                            f"but got {split}_subset={subset}")
        out.append(min(n, subset) if subset else n)
    return out[0], out[1]
