"""Image columns <-> ``uint8`` arrays, without going through per-row `datasets` formatting.

An image column is either a `datasets.Image` feature (PNG/JPEG bytes or file paths) or a numeric
array column (``Array2D``/``Array3D`` or nested fixed-length lists) holding ``uint8`` pixels in
``(H, W)`` or channels-last ``(H, W, C)`` layout. Both are read into one ``(N, H, W, C)`` ``uint8``
array and written back in the column's own feature type, so corruptions and recipes work on either.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Dataset, Features, Image

from ..ops.arrow import column_array
from ..ops.checks import check_columns

__all__ = ["read_images", "decode_images", "images_to_arrow", "encode_png", "png_label_dataset"]


def _decode(entry: dict) -> np.ndarray:
    from PIL import Image as PILImage

    if entry.get("bytes") is not None:
        image = PILImage.open(io.BytesIO(entry["bytes"]))
    elif entry.get("path"):
        image = PILImage.open(entry["path"])
    else:
        raise ValueError("an image entry has neither bytes nor a path")
    if image.mode not in ("L", "RGB"):
        # Palette, alpha, 16-bit and binary images: fold into the two layouts the pipeline uses.
        image = image.convert("L" if image.mode in ("1", "I", "I;16", "F") else "RGB")
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _stack(arrays: list[np.ndarray], column: str) -> np.ndarray:
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1:
        (h1, w1), (h2, w2) = sorted(shapes)[:2]
        raise ValueError(
            f"images in column {column!r} have different sizes (e.g. {h1}x{w1} and {h2}x{w2}); resize them to one size first"
        )
    if len({a.shape[2] for a in arrays}) > 1:  # mixed grayscale / colour: promote to RGB
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    return np.stack(arrays)


def _flatten_nested(arr: pa.Array, column: str) -> tuple[np.ndarray, list[int]]:
    """Flatten nested (fixed or variable) lists to values plus the per-row shape (must be uniform)."""
    if isinstance(arr.type, pa.ExtensionType):
        arr = arr.storage
    n, shape = len(arr), []
    while pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        if arr.null_count:
            raise ValueError(f"column {column!r} has null images")
        if pa.types.is_fixed_size_list(arr.type):
            width = arr.type.list_size
            arr = arr.flatten()
        else:
            lengths = np.diff(np.asarray(arr.offsets))
            if len(lengths) and (lengths != lengths[0]).any():
                raise ValueError(f"images in column {column!r} have different sizes; resize them to one size first")
            width = int(lengths[0]) if len(lengths) else 0
            arr = arr.flatten()
        shape.append(width)
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        raise ValueError(f"column {column!r} holds {arr.type} values; expected image pixels")
    values = arr.to_numpy(zero_copy_only=False)
    if n and len(values) != n * int(np.prod(shape)):
        raise ValueError(f"column {column!r} has ragged images")
    return values, shape


def read_images(dataset: Dataset, *, image_column: str = "image", indices=None) -> np.ndarray:
    """Read ``image_column`` (or its rows ``indices``) as an ``(N, H, W, C)`` ``uint8`` array.

    `datasets.Image` columns are decoded with PIL (grayscale stays one channel, other modes become
    RGB; a mix of grayscale and colour rows is promoted to RGB). Array columns must hold integers
    in ``[0, 255]``; 2-d rows are grayscale, 3-d rows are channels-last.

    Raises `KeyError` for a missing column and `ValueError` for images of different sizes,
    non-integer or out-of-range pixels.

    Example:
        >>> pixels = read_images(ds, image_column="image")   # (N, 28, 28, 1) uint8 for Fashion-MNIST
    """
    check_columns(dataset, image_column)
    arr = column_array(dataset, image_column)
    return decode_images(arr, dataset.features[image_column], image_column, indices=indices)


def decode_images(arr: pa.Array, feature, column: str = "image", *, indices=None) -> np.ndarray:
    """`read_images` on an already-read Arrow column (so chunked readers read the column once)."""
    if indices is not None:
        arr = arr.take(pa.array(np.asarray(indices, dtype=np.int64)))
    if len(arr) == 0:
        raise ValueError(f"column {column!r} has no rows")
    if isinstance(feature, Image):
        return _stack([_decode(entry) for entry in arr.to_pylist()], column)
    values, shape = _flatten_nested(arr, column)
    if len(shape) not in (2, 3):
        raise ValueError(f"column {column!r} rows have shape {tuple(shape)}; expected (H, W) or (H, W, C)")
    if not np.issubdtype(values.dtype, np.integer) or values.min() < 0 or values.max() > 255:
        raise ValueError(f"column {column!r} must hold uint8 pixel values (integers in [0, 255])")
    images = values.astype(np.uint8, copy=False).reshape(len(arr), *shape)
    return images[..., None] if images.ndim == 3 else images


def encode_png(images: np.ndarray) -> list[bytes]:
    """PNG bytes of each ``(H, W, C)`` ``uint8`` image (fast compression level: these are caches)."""
    from PIL import Image as PILImage

    out = []
    for image in images:
        buffer = io.BytesIO()
        PILImage.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG", compress_level=1)
        out.append(buffer.getvalue())
    return out


def png_label_dataset(images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> Dataset:
    """A Dataset of ``image`` (``(N, H, W, C)`` ``uint8`` images as PNG `datasets.Image`) and ``label``
    (int64 ids as a `ClassLabel` named ``class_names``), as the offline loaders build it."""
    features = Features({"image": Image(), "label": ClassLabel(names=class_names)})
    encoded = [{"bytes": b, "path": None} for b in encode_png(images)]
    return Dataset.from_dict({"image": encoded, "label": labels.astype(np.int64)}, features=features)


def _nest(values: np.ndarray, storage: pa.DataType, dims: list[int]) -> pa.Array:
    """Build an Arrow array of ``storage`` type (nested lists of per-row shape ``dims``) from flat values."""
    if not (pa.types.is_list(storage) or pa.types.is_fixed_size_list(storage) or pa.types.is_large_list(storage)):
        return pa.array(values).cast(storage)
    width = int(dims[0])
    rows = len(values) // int(np.prod(dims))
    inner = _nest(values, storage.value_type, dims[1:])
    if pa.types.is_fixed_size_list(storage):
        return pa.FixedSizeListArray.from_arrays(inner, width)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int64 if pa.types.is_large_list(storage) else np.int32) * width)
    cls = pa.LargeListArray if pa.types.is_large_list(storage) else pa.ListArray
    return cls.from_arrays(offsets, inner)


def images_to_arrow(images: np.ndarray, like: pa.DataType, feature) -> pa.Array:
    """``(M, H, W, C)`` ``uint8`` images as an Arrow array of the column type ``like``.

    `datasets.Image` columns get PNG bytes; array columns get the pixels in their stored layout
    (the channel axis is dropped again for 2-d columns).
    """
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if isinstance(feature, Image):
        struct = pa.StructArray.from_arrays(
            [pa.array(encode_png(images), type=pa.binary()), pa.array([None] * len(images), type=pa.string())],
            names=["bytes", "path"],
        )
        return struct.cast(like)
    storage = like.storage_type if isinstance(like, pa.ExtensionType) else like
    depth, t = 0, storage
    while pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
        depth, t = depth + 1, t.value_type
    if depth == 2:
        images = images[..., 0]
    nested = _nest(images.reshape(-1), storage, list(images.shape[1:]))
    return pa.ExtensionArray.from_storage(like, nested) if isinstance(like, pa.ExtensionType) else nested
