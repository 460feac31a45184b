import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Value

from hf_prune.data import load_digits
from hf_prune.data.captions import (
    DEFAULT_TEMPLATES,
    DIGIT_CAPTION_NAMES,
    DIGIT_TEMPLATES,
    FASHION_MNIST_CAPTION_NAMES,
    load_digits_captions,
    load_fashion_mnist_captions,
    with_captions,
)
from tests.data.test_loaders import fake_fashion_dir


def labelled(n=200, names=("cat", "dog", "fox")):  # no vowel first: the article stays "a"
    features = Features({"x": Value("int64"), "label": ClassLabel(names=list(names))})
    return Dataset.from_dict({"x": list(range(n)), "label": [i % len(names) for i in range(n)]}, features=features)


def test_captions_fill_templates_with_the_row_class():
    ds = labelled()
    templates = ["a photo of a {}.", "{} on a table", "my {}"]
    out = with_captions(ds, templates=templates, seed=0)
    assert out.column_names == ["x", "label", "caption"] and out.features["caption"] == Value("string")
    names = ds.features["label"].names
    used = set()
    for caption, label in zip(out["caption"], out["label"]):
        matches = [t for t in templates if t.format(names[label]) == caption]
        assert matches, caption
        used.add(matches[0])
    assert used == set(templates)  # every template is drawn
    assert ds.column_names == ["x", "label"]  # input untouched


def test_class_names_string_labels_and_articles():
    ds = labelled(names=("0", "1", "2"))
    out = with_captions(ds, class_names=["apple", "pear", "owl"], templates=["a {}", "A {} here", "the {}"], seed=1)
    allowed = {"an apple", "An apple here", "the apple", "a pear", "A pear here", "the pear", "an owl", "An owl here",
               "the owl"}
    assert set(out["caption"]) <= allowed and "an apple" in out["caption"]
    strings = Dataset.from_dict({"label": ["red car", "blue boat"] * 5})
    assert set(with_captions(strings, templates=["a {}"])["caption"]) == {"a red car", "a blue boat"}


def test_determinism_seed_and_overwrite():
    ds = labelled()
    a, b, c = (with_captions(ds, seed=s) for s in (0, 0, 1))
    assert a["caption"] == b["caption"] != c["caption"]
    g = [with_captions(ds, seed=np.random.default_rng(5))["caption"] for _ in range(2)]
    assert g[0] == g[1]
    with pytest.raises(ValueError, match="already exists"):
        with_captions(a)
    assert with_captions(a, seed=1, overwrite=True)["caption"] == c["caption"]
    assert set(c["caption"]) == {t.format(n) for t in DEFAULT_TEMPLATES for n in ("cat", "dog", "fox")}


def test_errors():
    ds = labelled()
    with pytest.raises(KeyError, match="'y'"):
        with_captions(ds, label_column="y")
    for bad in ([], ["no placeholder"], ["{} and {}"], ["{name}"], [3]):
        with pytest.raises(ValueError, match="templates"):
            with_captions(ds, templates=bad)
    with pytest.raises(ValueError, match="class_names"):
        with_captions(ds, class_names=["a", "b"])
    with pytest.raises(ValueError, match="outside"):
        with_captions(Dataset.from_dict({"label": [0, 5]}), class_names=["a", "b"])
    with pytest.raises(ValueError, match="no class names"):
        with_captions(Dataset.from_dict({"label": [0, 1]}))
    with pytest.raises(ValueError, match="differ"):
        with_captions(ds, output_column="label", overwrite=True)
    with pytest.raises(ValueError, match="seed"):
        with_captions(ds, seed="0")


def test_digits_captions():
    ds = load_digits_captions(seed=0)
    plain = load_digits(seed=np.random.default_rng([0, 0]))
    assert ds["train"]["label"] == plain["train"]["label"] and ds["test"].num_rows == plain["test"].num_rows
    for split in ("train", "test"):
        for caption, label in zip(ds[split]["caption"][:200], ds[split]["label"][:200]):
            assert any(t.format(DIGIT_CAPTION_NAMES[label]) == caption for t in DIGIT_TEMPLATES)
    assert load_digits_captions(seed=0)["test"]["caption"] == ds["test"]["caption"]


def test_fashion_mnist_captions(tmp_path):
    directory, arrays = fake_fashion_dir(tmp_path / "fm")
    ds = load_fashion_mnist_captions(directory, allow_hub=False, cache_dir=None, seed=0)
    assert ds["train"].column_names == ["image", "label", "caption"]
    for caption, label in zip(ds["train"]["caption"], ds["train"]["label"]):
        assert FASHION_MNIST_CAPTION_NAMES[label] in caption
