"""Fashion-MNIST from local IDX files (Debian's ``dataset-fashion-mnist``), else from the Hub."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, load_from_disk

from .images import png_label_dataset

__all__ = ["DEFAULT_FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "FASHION_MNIST_HUB_ID", "read_idx", "load_fashion_mnist"]

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
# Same names and order as the Hub dataset, so local and Hub copies are interchangeable.
FASHION_MNIST_CLASSES = [
    "T - shirt / top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a NumPy array.

    The format is two zero bytes, a type code, the number of dimensions, one big-endian ``int32``
    per dimension, then the values in C order.

    Example:
        >>> labels = read_idx("train-labels-idx1-ubyte.gz")   # (60000,) uint8
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: header announces {ndim} dimensions")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path} has {len(raw)} bytes; its header {dims} implies {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _local_split(images: np.ndarray, labels: np.ndarray) -> Dataset:
    return png_label_dataset(images[..., None], labels, FASHION_MNIST_CLASSES)


def _default_cache_dir() -> Path:
    from datasets import config

    return Path(config.HF_DATASETS_CACHE) / "hf_prune"


def _cache_key(paths: list[Path]) -> str:
    # File identity (name, size, mtime) plus a format version: a changed file gives a new entry.
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return hashlib.sha256(json.dumps(["fashion_mnist-v1", stats]).encode()).hexdigest()[:16]


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = DEFAULT_FASHION_MNIST_DIR,
    *,
    hub_id: str = FASHION_MNIST_HUB_ID,
    allow_hub: bool = True,
    cache_dir: str | os.PathLike | None | bool = True,
) -> DatasetDict:
    """Fashion-MNIST (60,000 train / 10,000 test 28×28 grayscale images, 10 classes) as a `DatasetDict`.

    Reads the four IDX files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
    ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``) from ``data_dir`` — on Debian
    and Ubuntu, ``apt-get install dataset-fashion-mnist`` puts them in the default directory. When
    they are missing it loads ``hub_id`` from the Hub instead (unless ``allow_hub=False``). Either
    way the splits have an ``image`` (`datasets.Image`, grayscale PNG) and a ``label``
    (`ClassLabel` with the Hub dataset's class names) column.

    Encoding 70,000 PNGs takes several seconds, so the local result is saved once (``save_to_disk``)
    under ``cache_dir`` (``True``: ``<HF datasets cache>/hf_prune``; ``None``/``False``: no cache),
    keyed by the files' names, sizes and modification times, and memory-mapped on later calls.

    Raises `FileNotFoundError` when the files are missing and the Hub is not allowed, `ValueError`
    for malformed or inconsistent IDX files.

    Example:
        >>> ds = load_fashion_mnist()
        >>> ds["train"].num_rows, ds["test"].num_rows
        (60000, 10000)
    """
    directory = Path(data_dir) if data_dir is not None else None
    found = {}
    if directory is not None and directory.is_dir():
        found = {split: tuple(_find(directory, stem) for stem in stems) for split, stems in _FILES.items()}
    if found and all(path is not None for paths in found.values() for path in paths):
        files = [path for paths in found.values() for path in paths]
        cache = None
        if cache_dir not in (None, False):
            root = _default_cache_dir() if cache_dir is True else Path(cache_dir)
            cache = root / f"fashion_mnist-{_cache_key(files)}"
            if (cache / "dataset_dict.json").is_file():
                return load_from_disk(str(cache))
        splits = {}
        for split, (image_path, label_path) in found.items():
            images, labels = read_idx(image_path), read_idx(label_path)
            if images.ndim != 3 or images.dtype != np.uint8:
                raise ValueError(f"{image_path} holds {images.dtype} of shape {images.shape}; expected (N, 28, 28) uint8")
            if labels.shape != (len(images),):
                raise ValueError(f"{label_path} has {labels.shape} labels for {len(images)} images in {image_path}")
            if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
                raise ValueError(f"{label_path} has label {labels.max()}; Fashion-MNIST has 10 classes")
            splits[split] = _local_split(images, labels)
        result = DatasetDict(splits)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            # Write next to the target and rename, so a concurrent reader never sees half a cache.
            staging = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
            result.save_to_disk(str(staging))
            try:
                staging.rename(cache)
            except OSError:  # another process won the race; its copy is identical
                shutil.rmtree(staging, ignore_errors=True)
            return load_from_disk(str(cache))
        return result
    if not allow_hub:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found in {str(data_dir)!r} (install the `dataset-fashion-mnist` package "
            "or pass data_dir=...), and allow_hub=False"
        )
    from .hub import load_image_dataset

    return load_image_dataset(hub_id)
