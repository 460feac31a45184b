"""Image-classification datasets from the Hub or disk, normalised to ``image``/``label`` columns."""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

__all__ = ["is_saved_dataset", "load_image_dataset", "load_cifar10", "load_cifar100"]


def is_saved_dataset(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` is a `save_to_disk` directory (for `load_from_disk`, not `load_dataset`).

    Checking for its ``dataset_dict.json``/``state.json`` lets other local paths (data files, a
    dataset script directory) still go to `load_dataset`.
    """
    path = Path(name_or_path)
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _load(name_or_path: str, **load_kwargs) -> DatasetDict:
    if is_saved_dataset(name_or_path):
        loaded = load_from_disk(name_or_path)
        if isinstance(loaded, Dataset):
            raise ValueError(f"{name_or_path!r} holds a single Dataset; a DatasetDict with train and test splits is needed")
        return loaded
    loaded = load_dataset(name_or_path, **load_kwargs)
    if not isinstance(loaded, DatasetDict):
        raise ValueError(f"loading {name_or_path!r} gave {type(loaded).__name__}; expected a DatasetDict with splits")
    return loaded


def load_image_dataset(
    name_or_path: str | os.PathLike,
    *,
    image_column: str = "image",
    label_column: str = "label",
    train_split: str = "train",
    test_split: str = "test",
    rename: bool = True,
    **load_kwargs,
) -> DatasetDict:
    """An image-classification dataset as a `DatasetDict` with exactly ``train`` and ``test`` splits.

    ``name_or_path`` is a Hub id or a local directory `datasets.load_dataset` understands, or a
    directory written by `DatasetDict.save_to_disk`. ``train_split``/``test_split`` pick the splits
    (renamed to ``train``/``test``); with ``rename=True`` the image and label columns are renamed to
    ``image`` and ``label``. Extra ``load_kwargs`` go to `load_dataset` (e.g. ``revision=``).

    Raises `KeyError` naming a missing split or column.

    Example:
        >>> ds = load_image_dataset("uoft-cs/cifar10", image_column="img")
        >>> ds["train"].column_names
        ['image', 'label']
    """
    loaded = _load(str(name_or_path), **load_kwargs)
    out = {}
    for target, split in (("train", train_split), ("test", test_split)):
        if split not in loaded:
            raise KeyError(f"split {split!r} not found in {str(name_or_path)!r}; it has {list(loaded)}")
        ds = loaded[split]
        for column in (image_column, label_column):
            if column not in ds.column_names:
                raise KeyError(f"column {column!r} not found in split {split!r}; it has {ds.column_names}")
        if rename:
            mapping = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}
            clash = [new for new in mapping.values() if new in ds.column_names]
            if clash:
                raise ValueError(f"cannot rename to {clash}: the split already has such a column; pass rename=False")
            ds = ds.rename_columns(mapping) if mapping else ds
        out[target] = ds
    return DatasetDict(out)


def load_cifar10(hub_id: str = "uoft-cs/cifar10", **load_kwargs) -> DatasetDict:
    """CIFAR-10 from the Hub (needs a network or a warm cache), columns renamed to ``image``/``label``.

    Example:
        >>> ds = load_cifar10()
    """
    return load_image_dataset(hub_id, image_column="img", label_column="label", **load_kwargs)


def load_cifar100(hub_id: str = "uoft-cs/cifar100", *, label: str = "fine", **load_kwargs) -> DatasetDict:
    """CIFAR-100 from the Hub; ``label="fine"`` (100 classes) or ``"coarse"`` (20) becomes ``label``.

    Example:
        >>> ds = load_cifar100(label="fine")
    """
    if label not in ("fine", "coarse"):
        raise ValueError(f"`label` must be 'fine' or 'coarse', got {label!r}")
    return load_image_dataset(hub_id, image_column="img", label_column=f"{label}_label", **load_kwargs)
