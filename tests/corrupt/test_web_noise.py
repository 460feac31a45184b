import importlib
import re
import warnings

import numpy as np
import pytest
from datasets import Array3D, ClassLabel, Dataset, Features, Image, Value

import hf_prune as hp
from hf_prune.corrupt import (
    WEB_NOISE,
    low_information_images,
    mismatched_pairs,
    near_duplicates,
    paraphrase,
    uninformative_captions,
    web_noise,
    wrong_language_captions,
)
from hf_prune.data import read_images

# The package exports the function `web_noise`, which shadows the module's attribute name.
module = importlib.import_module("hf_prune.corrupt.web_noise")

ALL = {"mismatch": 0.1, "uninformative": 0.05, "near_duplicate": 0.1, "low_information": 0.05, "wrong_language": 0.1}


def pool(n=200, size=12, channels=3, feature="image", captions=None, labels=None, seed=0):
    """Random images, unique captions (unless given), 4 balanced classes and an extra column."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    stored = pixels[..., 0] if channels == 1 and feature == "image" else pixels
    image_feature = Image() if feature == "image" else Array3D((size, size, channels), "uint8")
    features = Features({"image": image_feature, "caption": Value("string"), "label": ClassLabel(num_classes=4),
                         "extra": Value("int64")})
    return Dataset.from_dict({
        "image": list(stored),
        "caption": captions if captions is not None else [f"a photo of thing number {i}" for i in range(n)],
        "label": labels if labels is not None else [i % 4 for i in range(n)],
        "extra": list(range(1000, 1000 + n)),
    }, features=features), pixels


def stored(ds, column):
    return ds.with_format("arrow")[column].to_pylist()


@pytest.mark.parametrize("kind", WEB_NOISE)
@pytest.mark.parametrize("rate,expected", [(0.1, 20), (0.0, 0), (0.255, 51), (0.5, 100)])
def test_exact_counts_and_flags_name_the_kind(kind, rate, expected):
    ds, _ = pool()
    out = web_noise(ds, rates={kind: rate}, seed=0)
    flags, kinds = np.array(out["is_corrupted"]), np.array(out["corruption"], dtype=object)
    assert flags.sum() == expected
    assert set(kinds[flags]) <= {kind} and (kinds[~flags] == None).all()  # noqa: E711
    assert out.num_rows == ds.num_rows


def test_flags_match_the_changed_rows_exactly():
    ds, _ = pool()
    out = web_noise(ds, rates=ALL, seed=3)
    flags = np.array(out["is_corrupted"])
    assert flags.sum() == 20 + 10 + 20 + 10 + 20
    before = {c: stored(ds, c) for c in ds.column_names}
    after = {c: stored(out, c) for c in ds.column_names}
    changed = np.array([any(before[c][i] != after[c][i] for c in ds.column_names) for i in range(len(ds))])
    np.testing.assert_array_equal(changed, flags)  # unflagged rows byte-identical, flagged rows all changed
    kinds = np.array(out["corruption"], dtype=object)
    for kind in ("mismatch", "uninformative", "wrong_language"):  # caption-only kinds keep the image bytes
        rows = np.flatnonzero(kinds == kind)
        assert all(before["caption"][i] != after["caption"][i] and before["image"][i] == after["image"][i] for i in rows)
    rows = np.flatnonzero(kinds == "low_information")
    assert all(before["caption"][i] == after["caption"][i] and before["image"][i] != after["image"][i] for i in rows)


def test_kinds_take_disjoint_rows_in_exact_numbers():
    ds, _ = pool(n=1000)
    out = web_noise(ds, rates=ALL, seed=0)
    kinds = np.array(out["corruption"], dtype=object)
    assert {k: int((kinds == k).sum()) for k in WEB_NOISE} == {k: round(r * 1000) for k, r in ALL.items()}
    assert np.array(out["is_corrupted"]).sum() == 400


def test_single_kind_functions_are_web_noise_with_one_rate():
    ds, _ = pool()
    calls = [
        (mismatched_pairs, "mismatch", {"label_column": "label"}), (uninformative_captions, "uninformative", {}),
        (near_duplicates, "near_duplicate", {}), (low_information_images, "low_information", {}),
        (wrong_language_captions, "wrong_language", {}),
    ]
    for fn, kind, kw in calls:
        a, b = fn(ds, rate=0.2, seed=5, **kw), web_noise(ds, rates={kind: 0.2}, seed=5, **kw)
        assert a[:] == b[:] and a._fingerprint == b._fingerprint


def test_mismatch_is_a_derangement_across_classes():
    ds, _ = pool(n=400)
    out = mismatched_pairs(ds, rate=0.3, label_column="label", seed=1)
    flags = np.array(out["is_corrupted"])
    old, new = np.array(ds["caption"], dtype=object), np.array(out["caption"], dtype=object)
    assert (old[flags] != new[flags]).all() and (old[~flags] == new[~flags]).all()
    assert sorted(old[flags]) == sorted(new[flags])  # a permutation of the chosen rows' captions
    owner = {caption: i for i, caption in enumerate(old)}
    labels = np.array(ds["label"])
    sources = np.array([owner[c] for c in new[flags]])
    assert (labels[sources] != labels[flags]).all()  # every caption comes from another class
    assert out["label"] == ds["label"] and out["image"] == ds["image"]


def test_mismatch_with_repeated_captions_never_gives_back_the_same_text():
    captions = [f"a photo of a {name}" for name in ["cat", "dog", "bird", "fish"] * 50]
    ds, _ = pool(captions=captions)
    for seed in range(5):
        out = mismatched_pairs(ds, rate=0.5, seed=seed)
        flags = np.array(out["is_corrupted"])
        assert (np.array(out["caption"])[flags] != np.array(captions)[flags]).all()
    # With labels that follow the captions' classes, the repair step must keep labels and texts apart.
    labelled = pool(captions=captions, labels=[i % 4 for i in range(200)])[0]
    out = mismatched_pairs(labelled, rate=0.5, label_column="label", seed=0)
    flags = np.array(out["is_corrupted"])
    assert (np.array(out["caption"])[flags] != np.array(captions)[flags]).all()


def test_derangement_groups_and_repair():
    rng = np.random.default_rng(0)
    for m in range(2, 40):
        keys = rng.integers(0, 3, size=m)
        perm = module._derangement(keys, rng)
        if 2 * np.bincount(keys).max() > m:
            assert perm is None
        else:
            assert sorted(perm) == list(range(m)) and (keys[perm] != keys).all()
    assert module._derangement(np.array([0]), rng) is None
    # Labels apart but one caption text shared across classes: the repair swaps it away.
    labels, captions = np.array([0, 1, 0, 1, 2, 2]), np.array([5, 5, 1, 2, 3, 4])
    start = np.array([1, 4, 3, 5, 0, 2])  # labels apart; row 0 gets its own text "5" from row 1
    assert (labels[start] != labels).all() and captions[start][0] == captions[0]
    perm = module._repair(start.copy(), labels, captions)
    assert sorted(perm) == list(range(6))
    assert (labels[perm] != labels).all() and (captions[perm] != captions).all()


def test_mismatch_falls_back_to_caption_text_when_one_class_dominates():
    ds, _ = pool(labels=[0] * 180 + [1] * 20)
    with pytest.warns(UserWarning, match="another class of 'label'"):
        out = mismatched_pairs(ds, rate=0.5, label_column="label", seed=0)
    flags = np.array(out["is_corrupted"])
    assert (np.array(out["caption"])[flags] != np.array(ds["caption"])[flags]).all()
    same, _ = pool(captions=["same caption"] * 190 + [f"other {i}" for i in range(10)])
    with pytest.raises(ValueError, match="none keeps its own text"):
        mismatched_pairs(same, rate=0.5, seed=0)
    with pytest.raises(ValueError, match="fewer than 2 rows"):
        mismatched_pairs(same, rate=0.005, seed=0)  # one row cannot swap with itself


def test_uninformative_and_wrong_language_captions():
    ds, _ = pool(n=300)
    out = uninformative_captions(ds, rate=0.5, seed=0)
    new = np.array(out["caption"], dtype=object)[np.array(out["is_corrupted"])]
    file_name = re.compile(r"^\S.*\.(jpg|JPG|jpeg|png|PNG|webp|gif)$")
    assert all(c in module._BOILERPLATE or file_name.match(c) for c in new)
    assert 0.3 < np.mean([c in module._BOILERPLATE for c in new]) < 0.7  # about half each
    assert len(set(new)) > 50  # file names vary

    out = wrong_language_captions(ds, rate=0.5, seed=0)
    new = np.array(out["caption"], dtype=object)[np.array(out["is_corrupted"])]
    listed = {w for words in module._WORDS.values() for w in words} | set(module._TRANSLITERATED)
    non_ascii = np.array([not c.isascii() for c in new])
    assert non_ascii.mean() > 0.4  # foreign scripts and accented words
    assert all(ok or all(w in listed for w in c.split(" ")) for c, ok in zip(new, non_ascii))
    assert all(c.strip() for c in new)


def test_uninformative_caption_is_never_the_old_one():
    captions = ["stock photo"] * 100 + ["untitled"] * 100  # already boilerplate
    ds, _ = pool(captions=captions)
    out = uninformative_captions(ds, rate=1.0, seed=0)
    assert (np.array(out["caption"]) != np.array(captions)).all()


def test_near_duplicates_copy_a_clean_row_with_jitter():
    ds, pixels = pool(n=300, size=24)
    ds = hp.select.random(ds, size=250, seed=0)  # a view with row_id and provenance
    out = near_duplicates(ds, rate=0.2, seed=0)
    flags = np.array(out["is_corrupted"])
    source = np.array(out["duplicate_of"], dtype=object)
    assert (source[~flags] == None).all() and flags.sum() == 50  # noqa: E711
    targets, sources = np.flatnonzero(flags), source[flags].astype(int)
    assert not flags[sources].any() and len(set(sources)) == 50  # clean, distinct sources
    assert out["row_id"] == ds["row_id"]
    for column in ("label", "extra"):  # the other columns come from the source
        np.testing.assert_array_equal(np.array(out[column])[targets], np.array(ds[column])[sources])
    before, after = read_images(ds).astype(int), read_images(out).astype(int)
    np.testing.assert_array_equal(after[~flags], before[~flags])
    diff = np.abs(after[targets] - before[sources]).mean(axis=(1, 2, 3))
    assert (diff > 0).all() and (diff < 60).all()  # near, not equal (uniform noise images differ by ~85)
    other = np.abs(after[targets] - before[np.roll(sources, 1)]).mean(axis=(1, 2, 3))
    assert (diff < other).all()  # closer to its own source than to another row
    old_captions, new_captions = np.array(ds["caption"]), np.array(out["caption"])
    for t, s in zip(targets, sources):
        assert new_captions[t] != old_captions[s]
        assert old_captions[s].split(" ")[-1] in new_captions[t]  # a light rewrite keeps the words
    assert [step["method"] for step in hp.provenance(out)] == ["random"]


def test_paraphrase_is_light_and_always_different():
    rng = np.random.default_rng(0)
    for caption in ["a photo of a small red circle", "x", ".", "图片", "A Big Dog.", ""]:
        for _ in range(30):
            new = paraphrase(caption, rng)
            assert new != caption and new.strip()
            assert len(new) <= len(caption) + 12


def test_low_information_images_grayscale_and_arrays():
    for channels, feature in ((1, "image"), (3, "array")):
        ds, pixels = pool(channels=channels, feature=feature)
        out = low_information_images(ds, rate=0.3, seed=0)
        flags = np.array(out["is_corrupted"])
        after = read_images(out)
        assert after.shape == pixels.shape and out.features["image"] == ds.features["image"]
        np.testing.assert_array_equal(after[~flags], pixels[~flags])
        flat = np.array([len(np.unique(im.reshape(-1, channels), axis=0)) == 1 for im in after[flags]])
        assert flat.sum() == 30  # half of 60 flat, the others noise
        noise = after[flags][~flat].astype(float)
        assert abs(noise.mean() - 127.5) < 8 and noise.std() > 60
        assert out["caption"] == ds["caption"]


def test_determinism_seed_and_generator():
    ds, _ = pool()
    a, b = web_noise(ds, rates=ALL, seed=7), web_noise(ds, rates=ALL, seed=7)
    c = web_noise(ds, rates=ALL, seed=8)
    assert a[:] == b[:] and a._fingerprint == b._fingerprint != c._fingerprint
    assert a["is_corrupted"] != c["is_corrupted"]
    g1, g2 = web_noise(ds, rates=ALL, seed=np.random.default_rng(1)), web_noise(ds, rates=ALL, seed=np.random.default_rng(1))
    assert g1[:] == g2[:]
    # The order of the mapping does not matter: kinds are applied in WEB_NOISE order.
    assert web_noise(ds, rates=dict(reversed(list(ALL.items()))), seed=7)[:] == a[:]


def test_input_untouched_and_columns():
    ds, _ = pool()
    before = ds[:]
    out = web_noise(ds, rates=ALL, seed=0)
    assert ds[:] == before and ds.column_names == ["image", "caption", "label", "extra"]
    assert out.column_names == ["image", "caption", "label", "extra", "is_corrupted", "corruption", "duplicate_of"]
    assert out.features["is_corrupted"] == Value("bool") and out.features["duplicate_of"] == Value("int64")
    text_only = web_noise(ds.remove_columns("image"), rates={"mismatch": 0.1, "wrong_language": 0.1}, seed=0,
                          type_column=None)
    assert text_only.column_names == ["caption", "label", "extra", "is_corrupted"]


def test_errors():
    ds, _ = pool(n=20)
    with pytest.raises(ValueError, match="unknown kinds"):
        web_noise(ds, rates={"blur": 0.1})
    with pytest.raises(ValueError, match="non-empty mapping"):
        web_noise(ds, rates={})
    with pytest.raises(ValueError, match=r"rates\['mismatch'\]"):
        web_noise(ds, rates={"mismatch": 1.5})
    with pytest.raises(ValueError, match="add up to"):
        web_noise(ds, rates={"mismatch": 0.6, "uninformative": 0.6})
    with pytest.raises(KeyError, match="'text'"):
        mismatched_pairs(ds, rate=0.1, text_column="text")
    with pytest.raises(KeyError, match="'img'"):
        low_information_images(ds, rate=0.1, image_column="img")
    with pytest.raises(KeyError, match="'cls'"):
        mismatched_pairs(ds, rate=0.1, label_column="cls")
    with pytest.raises(ValueError, match="captions must be strings"):
        uninformative_captions(ds, rate=0.1, text_column="extra")
    with pytest.raises(ValueError, match="seed"):
        web_noise(ds, rates=ALL, seed=-1)
    with pytest.raises(ValueError, match="must differ"):
        web_noise(ds, rates=ALL, type_column="is_corrupted")
    with pytest.raises(ValueError, match="must differ"):
        uninformative_captions(ds, rate=0.1, flag_column="caption", overwrite=True)
    with pytest.raises(ValueError, match="empty"):
        web_noise(ds.select([]), rates=ALL)
    with pytest.raises(ValueError, match="leave none"):
        near_duplicates(ds, rate=1.0)
    once = web_noise(ds, rates=ALL, seed=0)
    with pytest.raises(ValueError, match="already exists"):
        web_noise(once, rates=ALL, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twice = web_noise(once, rates=ALL, seed=1, overwrite=True)
    assert np.array(twice["is_corrupted"]).sum() == 8
    with pytest.raises(TypeError):
        web_noise(ds, ALL)


def test_on_the_scenes_pool():
    from hf_prune.data.image_text import check_image_text
    from hf_prune.data.scenes import render_scenes

    ds = render_scenes(300, seed=0)
    out = web_noise(ds, rates=ALL, label_column="shape", seed=0)
    assert check_image_text(out, sample_size=None) is out  # no empty captions, every image decodes
    kinds = np.array(out["corruption"], dtype=object)
    for i in np.flatnonzero(kinds == "mismatch"):  # another main shape: none of this scene's paraphrases
        assert out[int(i)]["caption"] not in ds[int(i)]["captions"] and out[int(i)]["shape"] == ds[int(i)]["shape"]
    for i in np.flatnonzero(kinds == "near_duplicate"):
        source = ds[int(out[int(i)]["duplicate_of"])]
        assert out[int(i)]["objects"] == source["objects"] and out[int(i)]["captions"] == source["captions"]
