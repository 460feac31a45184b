import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from hf_prune.data import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    images_to_arrow,
    load_cifar10,
    load_cifar100,
    load_digits,
    load_fashion_mnist,
    load_image_dataset,
    read_idx,
    read_images,
)
from hf_prune.data import hub as hub_module


def write_idx(path: Path, array: np.ndarray, code: int = 0x08, compress: bool = True) -> None:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def fake_fashion_dir(tmp_path: Path, n_train=12, n_test=5, compress=True) -> tuple[Path, dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)
        arrays[split] = (images, labels)
    return tmp_path, arrays


def test_read_idx_hand_made(tmp_path):
    values = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    write_idx(tmp_path / "a.idx", values, code=0x0C, compress=False)
    out = read_idx(tmp_path / "a.idx")
    np.testing.assert_array_equal(out, values)
    assert out.dtype == np.int32
    write_idx(tmp_path / "b.gz", np.array([1, 2, 255], dtype=np.uint8))
    np.testing.assert_array_equal(read_idx(tmp_path / "b.gz"), [1, 2, 255])
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 10) + b"\x00\x01")
    with pytest.raises(ValueError, match="implies"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_idx_files(tmp_path, compress):
    directory, arrays = fake_fashion_dir(tmp_path / "fm", compress=compress)
    ds = load_fashion_mnist(directory, allow_hub=False, cache_dir=None)
    assert isinstance(ds, DatasetDict) and set(ds) == {"train", "test"}
    assert ds["train"].num_rows == 12 and ds["test"].num_rows == 5
    assert isinstance(ds["train"].features["image"], Image)
    assert ds["train"].features["label"] == ClassLabel(names=FASHION_MNIST_CLASSES)
    for split in ("train", "test"):
        images, labels = arrays[split]
        np.testing.assert_array_equal(read_images(ds[split])[..., 0], images)  # lossless PNG round trip
        assert ds[split]["label"] == labels.tolist()


def test_fashion_mnist_cache_is_reused_and_keyed_by_files(tmp_path):
    directory, arrays = fake_fashion_dir(tmp_path / "fm")
    first = load_fashion_mnist(directory, allow_hub=False, cache_dir=tmp_path / "cache")
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and first["train"].cache_files  # memory-mapped from the cache
    again = load_fashion_mnist(directory, allow_hub=False, cache_dir=tmp_path / "cache")
    assert again["train"]._fingerprint == first["train"]._fingerprint
    np.testing.assert_array_equal(read_images(again["test"])[..., 0], arrays["test"][0])
    # Rewriting a file (other size) gives a new cache entry rather than stale data.
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    write_idx(directory / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28), dtype=np.uint8))
    fresh = load_fashion_mnist(directory, allow_hub=False, cache_dir=tmp_path / "cache")
    assert fresh["test"]["label"] == [0] * 5 and len(list((tmp_path / "cache").iterdir())) == 2


def test_fashion_mnist_missing_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, allow_hub=False)
    calls = []
    monkeypatch.setattr(hub_module, "load_dataset", lambda name, **kw: calls.append(name) or _fake_hub("image", "label"))
    ds = load_fashion_mnist(tmp_path / "nowhere")
    assert calls == ["zalando-datasets/fashion_mnist"] and ds["train"].column_names == ["image", "label"]


def test_fashion_mnist_inconsistent_files(tmp_path):
    directory, _ = fake_fashion_dir(tmp_path / "fm")
    write_idx(directory / "train-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="labels for 12 images"):
        load_fashion_mnist(directory, allow_hub=False, cache_dir=None)


@pytest.mark.skipif(not Path(DEFAULT_FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz").is_file(), reason="package not installed")
def test_real_fashion_mnist_files():
    images = read_idx(Path(DEFAULT_FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(Path(DEFAULT_FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz"))
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10


@pytest.mark.slow
@pytest.mark.skipif(not Path(DEFAULT_FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz").is_file(), reason="package not installed")
def test_real_fashion_mnist_dataset(tmp_path):
    ds = load_fashion_mnist(cache_dir=tmp_path)
    assert ds["train"].num_rows == 60000 and ds["test"].num_rows == 10000
    assert np.bincount(np.array(ds["test"]["label"])).tolist() == [1000] * 10
    assert read_images(ds["test"], indices=[0, 1]).shape == (2, 28, 28, 1)


def test_digits_split_is_stratified_and_seeded():
    ds = load_digits(test_fraction=0.2, seed=0)
    # Per class round(0.2 · n_c) test rows: 359 in all (not round(0.2 · 1797) = 359.4 → 360 overall).
    assert (ds["train"].num_rows, ds["test"].num_rows) == (1438, 359)
    train_labels, test_labels = np.array(ds["train"]["label"]), np.array(ds["test"]["label"])
    from sklearn.datasets import load_digits as sk

    counts = np.bincount(sk().target)
    np.testing.assert_array_equal(np.bincount(test_labels), np.round(0.2 * counts).astype(int))
    np.testing.assert_array_equal(np.bincount(train_labels) + np.bincount(test_labels), counts)
    pixels = read_images(ds["train"])
    assert pixels.shape == (len(train_labels), 8, 8, 1) and pixels.max() == 255
    # Pixel values are sklearn's 0..16 scaled to 0..255.
    assert set(np.unique(pixels).tolist()) <= set(np.round(np.arange(17) * 255 / 16).astype(int).tolist())
    again, other = load_digits(seed=0), load_digits(seed=1)
    assert again["test"]["label"] == ds["test"]["label"]
    np.testing.assert_array_equal(read_images(again["test"]), read_images(ds["test"]))
    assert not np.array_equal(read_images(other["test"]), read_images(ds["test"]))
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.0)


def _fake_hub(image_column, label_column, extra=None):
    rng = np.random.default_rng(0)
    features = Features({image_column: Image(), label_column: ClassLabel(num_classes=3), **(extra or {})})

    def split(n):
        data = {image_column: list(rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)), label_column: [i % 3 for i in range(n)]}
        for name in extra or {}:
            data[name] = [0] * n
        return Dataset.from_dict(data, features=features)

    return DatasetDict({"train": split(6), "test": split(3)})


def test_load_image_dataset_from_disk_and_renaming(tmp_path):
    _fake_hub("img", "fine_label").save_to_disk(str(tmp_path / "dd"))
    ds = load_image_dataset(tmp_path / "dd", image_column="img", label_column="fine_label")
    assert ds["train"].column_names == ["image", "label"] and ds["test"].num_rows == 3
    kept = load_image_dataset(tmp_path / "dd", image_column="img", label_column="fine_label", rename=False)
    assert kept["train"].column_names == ["img", "fine_label"]
    with pytest.raises(KeyError, match="nope"):
        load_image_dataset(tmp_path / "dd", image_column="nope", label_column="fine_label")
    with pytest.raises(KeyError, match="validation"):
        load_image_dataset(tmp_path / "dd", image_column="img", label_column="fine_label", test_split="validation")
    _fake_hub("img", "fine_label")["train"].save_to_disk(str(tmp_path / "single"))
    with pytest.raises(ValueError, match="single Dataset"):
        load_image_dataset(tmp_path / "single")


def test_cifar_loaders_map_columns(monkeypatch):
    seen = []

    def fake_load(name, **kwargs):
        seen.append(name)
        return _fake_hub("img", "label") if name.endswith("cifar10") else _fake_hub("img", "fine_label", {"coarse_label": Value("int64")})

    monkeypatch.setattr(hub_module, "load_dataset", fake_load)
    assert load_cifar10()["train"].column_names == ["image", "label"]
    assert load_cifar100()["train"].column_names == ["image", "label", "coarse_label"]
    assert seen == ["uoft-cs/cifar10", "uoft-cs/cifar100"]
    with pytest.raises(ValueError, match="label"):
        load_cifar100(label="medium")


def test_read_images_array_columns_and_round_trip():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    rgb = rng.integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    from datasets import Array2D, Array3D, List

    for values, feature in (
        (gray, Array2D((5, 4), "uint8")),
        (rgb, Array3D((5, 4, 3), "uint8")),
        (gray, List(List(Value("uint8"), length=4), length=5)),
        (rgb, Image()),
    ):
        ds = Dataset.from_dict({"x": list(values)}, features=Features({"x": feature}))
        out = read_images(ds, image_column="x")
        expected = values[..., None] if values.ndim == 3 else values
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(read_images(ds, image_column="x", indices=[2, 0]), expected[[2, 0]])
        # Writing back in the column's own type round-trips exactly.
        arrow = images_to_arrow(expected[::-1].copy(), ds.data.table.column("x").type, feature)
        back = Dataset.from_dict({"x": list(values)}, features=Features({"x": feature}))
        from hf_prune.corrupt._common import replace_columns

        swapped = replace_columns(back, {"x": (arrow, feature)}, method="t", params={})
        np.testing.assert_array_equal(read_images(swapped, image_column="x"), expected[::-1])


def test_read_images_errors():
    ds = Dataset.from_dict({"x": [np.zeros((4, 4), np.uint8), np.zeros((5, 5), np.uint8)]}, features=Features({"x": Image()}))
    with pytest.raises(ValueError, match="different sizes"):
        read_images(ds, image_column="x")
    with pytest.raises(KeyError, match="nope"):
        read_images(ds, image_column="nope")
    floats = Dataset.from_dict({"x": [[[0.5, 0.2], [0.1, 0.0]]]})
    with pytest.raises(ValueError, match="uint8"):
        read_images(floats, image_column="x")
    big = Dataset.from_dict({"x": [[[300, 2], [1, 0]]]})
    with pytest.raises(ValueError, match="uint8"):
        read_images(big, image_column="x")
    mixed = Dataset.from_dict(
        {"x": [np.zeros((4, 4), np.uint8), np.full((4, 4, 3), 9, np.uint8)]}, features=Features({"x": Image()})
    )
    out = read_images(mixed, image_column="x")
    assert out.shape == (2, 4, 4, 3) and (out[1] == 9).all()  # grayscale promoted to RGB
