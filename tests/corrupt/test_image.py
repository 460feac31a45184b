import numpy as np
import pytest
from datasets import Array3D, ClassLabel, Dataset, Features, Image, Value

import hf_prune as hp
from hf_prune.corrupt import CORRUPTIONS, apply_corruption, corrupt_images, plasma_fractal
from hf_prune.corrupt.image import motion_blur_kernel
from hf_prune.data import read_images


def image_dataset(n=60, size=16, channels=1, feature="image", seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(40, 216, size=(n, size, size, channels), dtype=np.uint8)
    stored = pixels[..., 0] if channels == 1 and feature == "image" else pixels
    image_feature = Image() if feature == "image" else Array3D((size, size, channels), "uint8")
    features = Features({"image": image_feature, "label": ClassLabel(num_classes=3)})
    return Dataset.from_dict({"image": list(stored), "label": [i % 3 for i in range(n)]}, features=features), pixels


@pytest.mark.parametrize("rate,expected", [(0.2, 12), (0.5, 30), (0.0, 0), (1.0, 60), (0.11, 7)])
def test_exact_counts_and_equal_shares(rate, expected):
    ds, pixels = image_dataset()
    out = corrupt_images(ds, rate=rate, seed=0)
    flags = np.array(out["is_corrupted"])
    kinds = np.array(out["corruption"], dtype=object)
    assert flags.sum() == expected
    assert (kinds[~flags] == None).all() and (kinds[flags] != None).all()  # noqa: E711
    counts = {name: int((kinds == name).sum()) for name in CORRUPTIONS}
    # m rows split into five parts of ⌈m/5⌉ or ⌊m/5⌋, the first m mod 5 corruptions getting one more.
    shares = [expected // 5 + (i < expected % 5) for i in range(5)]
    assert list(counts.values()) == shares
    after = read_images(out)
    np.testing.assert_array_equal(after[~flags], pixels[~flags])  # clean rows are byte-identical
    assert (after[flags] != pixels[flags]).reshape(expected, -1).any(axis=1).all() if expected else True


def test_untouched_rows_keep_their_stored_bytes():
    ds, _ = image_dataset()
    out = corrupt_images(ds, rate=0.2, seed=0)
    flags = np.array(out["is_corrupted"])
    old = ds.data.table.column("image").to_pylist()
    new = out.data.table.column("image").to_pylist()
    assert all(old[i] == new[i] for i in np.flatnonzero(~flags))


def test_determinism_and_seed():
    ds, _ = image_dataset()
    a, b = corrupt_images(ds, rate=0.3, seed=1), corrupt_images(ds, rate=0.3, seed=1)
    c = corrupt_images(ds, rate=0.3, seed=2)
    np.testing.assert_array_equal(read_images(a), read_images(b))
    assert a["corruption"] == b["corruption"] and a._fingerprint == b._fingerprint
    assert a["is_corrupted"] != c["is_corrupted"]


def test_array_columns_rgb_subset_and_provenance():
    ds, pixels = image_dataset(n=30, channels=3, feature="array")
    sub = hp.select.random(ds, size=20, seed=0)
    out = corrupt_images(sub, rate=0.5, seed=0, corruptions=["fog", "occlusion"], type_column=None)
    assert out.features["image"] == ds.features["image"] and "corruption" not in out.column_names
    assert out.column_names == ["image", "label", "row_id", "is_corrupted"]
    assert np.array(out["is_corrupted"]).sum() == 10
    after, ids = read_images(out), np.array(out["row_id"])
    flags = np.array(out["is_corrupted"])
    np.testing.assert_array_equal(after[~flags], pixels[ids[~flags]])
    assert [s["method"] for s in hp.provenance(out)] == ["random"]


def test_format_is_kept():
    ds, _ = image_dataset(n=10)
    out = corrupt_images(ds.with_format("numpy"), rate=0.5, seed=0)
    assert out.format["type"] == "numpy" and out[0]["is_corrupted"].dtype == np.bool_


def test_gaussian_noise_statistics():
    # Mid-gray images never clip at severity 3 (σ = 0.08): the residual std is σ·255 ≈ 20.4 levels.
    gray = np.full((64, 32, 32, 1), 128, np.uint8)
    out = apply_corruption(gray, "gaussian_noise", severity=3, rng=0).astype(float) - 128
    assert abs(out.std() - 0.08 * 255) < 0.4 and abs(out.mean()) < 0.3
    stronger = apply_corruption(gray, "gaussian_noise", severity=5, rng=0).astype(float) - 128
    assert stronger.std() > out.std()


def test_occlusion_is_one_rectangle_of_the_documented_size():
    flat = np.full((200, 32, 32, 1), 7, np.uint8)
    out = apply_corruption(flat, "occlusion", severity=3, rng=0)
    for image in out[..., 0]:
        rows, cols = np.nonzero(image != 7)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        # a = 0.4 at severity 3: sides in [⌈0.2·32⌉, ⌈0.4·32⌉] = [7, 13]
        assert 7 <= h <= 13 and 7 <= w <= 13
        assert (image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] != 7).mean() > 0.9  # filled, random


def test_resolution_reduction_hand_computed():
    # 32 px at severity 2 (f = 0.5): 2×2 block means, then each block repeated.
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 32, 32, 1)).astype(np.uint8)
    out = apply_corruption(image, "resolution", severity=2, rng=0)[0, ..., 0]
    blocks = image[0, ..., 0].reshape(16, 2, 16, 2).astype(float).mean(axis=(1, 3))
    # Each output pixel is its block mean rounded (to either neighbour when the mean is exactly .5).
    np.testing.assert_allclose(out, np.kron(blocks, np.ones((2, 2))), atol=0.5 + 1e-6, rtol=0)


def test_fog_brightens_dark_images_and_keeps_the_peak():
    image = np.zeros((8, 32, 32, 1), np.uint8)
    image[:, 10:20, 10:20] = 200
    out = apply_corruption(image, "fog", severity=3, rng=0).astype(float)
    assert out.max() <= 200 + 1  # (x + c·plasma)·max/(max + c) never exceeds the original peak
    assert out[:, :10].mean() > 20  # the black background is fogged
    assert out[:, 10:20, 10:20].mean() < 200  # contrast of the object drops
    field = plasma_fractal(4, 32, 2.0, np.random.default_rng(0))
    assert field.shape == (4, 32, 32) and np.allclose(field.min(axis=(1, 2)), 0) and np.allclose(field.max(axis=(1, 2)), 1)
    with pytest.raises(ValueError, match="power of two"):
        plasma_fractal(1, 30, 2.0, np.random.default_rng(0))


def test_motion_blur_spreads_a_point_along_one_line():
    kernel = motion_blur_kernel(10, 2.0)
    assert len(kernel) == 21 and np.isclose(kernel.sum(), 1) and (np.diff(kernel) < 0).all()
    point = np.zeros((50, 32, 32, 1), np.uint8)
    point[:, 16, 16] = 255
    out = apply_corruption(point, "motion_blur", severity=3, rng=1)[..., 0].astype(float)
    for image in out:
        ys, xs = np.nonzero(image)
        assert image.sum() == pytest.approx(255, abs=8)  # mass is conserved (up to rounding)
        assert image[16, 16] < 255 and len(ys) >= 2
        # One-sided: the point moves to x ≤ 16 or ≥ 16 consistently, within ±45° of the x axis.
        dx, dy = xs - 16, ys - 16
        assert (np.abs(dy) <= np.abs(dx) + 1).all()
        assert (dx <= 0).all() or (dx >= 0).all()


def test_apply_corruption_errors():
    images = np.zeros((2, 8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match="unknown corruption"):
        apply_corruption(images, "snow")
    with pytest.raises(ValueError, match="severity"):
        apply_corruption(images, "fog", severity=6)
    with pytest.raises(ValueError, match="uint8"):
        apply_corruption(images.astype(float), "fog")


def test_corrupt_images_errors():
    ds, _ = image_dataset(n=10)
    with pytest.raises(KeyError, match="img"):
        corrupt_images(ds, rate=0.1, image_column="img")
    with pytest.raises(ValueError, match="rate"):
        corrupt_images(ds, rate=-0.1)
    with pytest.raises(ValueError, match="corruptions"):
        corrupt_images(ds, rate=0.1, corruptions=["fog", "fog"])
    with pytest.raises(ValueError, match="corruptions"):
        corrupt_images(ds, rate=0.1, corruptions=["rain"])
    with pytest.raises(ValueError, match="already exists"):
        corrupt_images(corrupt_images(ds, rate=0.1), rate=0.1)
    different = Dataset.from_dict(
        {"image": [np.zeros((4, 4), np.uint8), np.zeros((6, 6), np.uint8)], "label": [0, 1]},
        features=Features({"image": Image(), "label": Value("int64")}),
    )
    with pytest.raises(ValueError, match="different sizes"):
        corrupt_images(different, rate=1.0, corruptions=["fog"])
