import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Value

import hf_prune as hp
from hf_prune.corrupt import symmetric_label_noise
from tests.conftest import make_dataset


def labelled(n=1000, classes=10):
    labels = np.arange(n) % classes
    return Dataset.from_dict(
        {"x": np.arange(n), "label": labels}, features=Features({"x": Value("int64"), "label": ClassLabel(num_classes=classes)})
    )


@pytest.mark.parametrize("rate,expected", [(0.2, 200), (0.35, 350), (0.0, 0), (1.0, 1000), (0.0005, 0), (0.0015, 2)])
def test_exact_number_of_flipped_labels(rate, expected):
    ds = labelled()
    noisy = symmetric_label_noise(ds, rate=rate, seed=0)
    flags = np.array(noisy["is_noisy_label"])
    clean, new = np.array(ds["label"]), np.array(noisy["label"])
    assert flags.sum() == expected
    assert (new[flags] != clean[flags]).all()  # every marked row is really mislabeled
    np.testing.assert_array_equal(new[~flags], clean[~flags])  # the others are untouched
    np.testing.assert_array_equal(np.array(noisy["clean_label"]), clean)


def test_new_labels_are_uniform_over_the_other_classes():
    # 20,000 flips from class 0 of a 5-class set: each other class should get 1/4 (chi-square, 3 dof).
    ds = Dataset.from_dict({"label": [0] * 20000}, features=Features({"label": ClassLabel(num_classes=5)}))
    noisy = np.array(symmetric_label_noise(ds, rate=1.0, seed=3)["label"])
    counts = np.bincount(noisy, minlength=5)
    assert counts[0] == 0
    expected = 20000 / 4
    chi2 = ((counts[1:] - expected) ** 2 / expected).sum()
    assert chi2 < 16.27  # p = 0.001 critical value for 3 degrees of freedom


def test_rows_are_a_uniform_draw():
    # Over many seeds every row is flipped with probability `rate` (no positional bias).
    ds = labelled(n=50, classes=5)
    hits = sum(np.array(symmetric_label_noise(ds, rate=0.2, seed=s)["is_noisy_label"]) for s in range(400))
    assert hits.sum() == 400 * 10
    assert abs(hits[:25].mean() - hits[25:].mean()) < 12  # each half averages 80 hits


def test_determinism_and_seed_sensitivity():
    ds = labelled()
    a = symmetric_label_noise(ds, rate=0.3, seed=7)
    b = symmetric_label_noise(ds, rate=0.3, seed=7)
    c = symmetric_label_noise(ds, rate=0.3, seed=8)
    assert a["label"] == b["label"] and a["is_noisy_label"] == b["is_noisy_label"]
    assert a._fingerprint == b._fingerprint != c._fingerprint
    assert a["is_noisy_label"] != c["is_noisy_label"]


def test_features_input_and_provenance_are_preserved():
    ds = hp.select.random(labelled(), size=100, seed=0)  # carries row_id and a provenance step
    before = ds[:]
    noisy = symmetric_label_noise(ds, rate=0.1, seed=0, original_column=None)
    assert ds[:] == before and "is_noisy_label" not in ds.column_names
    assert noisy.column_names == ["x", "label", "row_id", "is_noisy_label"]
    assert noisy.features["label"] == ds.features["label"] and noisy.features["is_noisy_label"] == Value("bool")
    assert noisy["row_id"] == ds["row_id"]
    assert [s["method"] for s in hp.provenance(noisy)] == ["random"]


def test_plain_integer_labels_and_num_classes():
    ds = make_dataset(label=[0, 1, 2, 0, 1, 2, 0, 1])
    noisy = symmetric_label_noise(ds, rate=0.5, seed=0, num_classes=4)
    new, flags = np.array(noisy["label"]), np.array(noisy["is_noisy_label"])
    assert flags.sum() == 4 and new.max() <= 3
    assert (new[flags] != np.array(ds["label"])[flags]).all()


def test_errors():
    ds = labelled(20)
    with pytest.raises(KeyError, match="nope"):
        symmetric_label_noise(ds, rate=0.1, label_column="nope")
    with pytest.raises(ValueError, match="rate"):
        symmetric_label_noise(ds, rate=1.5)
    with pytest.raises(ValueError, match="seed"):
        symmetric_label_noise(ds, rate=0.1, seed="x")
    with pytest.raises(ValueError, match="2 classes"):
        symmetric_label_noise(make_dataset(label=[0, 0, 0]), rate=0.5)
    with pytest.raises(ValueError, match="integer class ids"):
        symmetric_label_noise(make_dataset(label=["a", "b"]), rate=0.5)
    with pytest.raises(ValueError, match="outside"):
        symmetric_label_noise(make_dataset(label=[0, 5]), rate=0.5, num_classes=3)
    with pytest.raises(ValueError, match="disagrees"):
        symmetric_label_noise(ds, rate=0.5, num_classes=3)
    once = symmetric_label_noise(ds, rate=0.1)
    with pytest.raises(ValueError, match="already exists"):
        symmetric_label_noise(once, rate=0.1)
    twice = symmetric_label_noise(once, rate=0.1, seed=1, overwrite=True)
    assert np.array(twice["is_noisy_label"]).sum() == 2
    with pytest.raises(ValueError, match="empty"):
        symmetric_label_noise(labelled(0), rate=0.1)
    with pytest.raises(TypeError):
        symmetric_label_noise(ds, 0.1)
