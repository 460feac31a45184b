import numpy as np
import pytest
from datasets import ClassLabel, DatasetDict, Image

from hf_prune.data import read_images
from hf_prune.data.scenes import _RGB as RGB
from hf_prune.data.scenes import (
    SCENE_ATTRIBUTES,
    SCENE_COLORS,
    SCENE_SHAPES,
    load_scenes,
    render_scenes,
    scene_zero_shot_classes,
)


@pytest.fixture(scope="module")
def scenes():
    return load_scenes(num_train=300, num_test=60, seed=0)


def test_splits_columns_and_features(scenes):
    assert isinstance(scenes, DatasetDict) and set(scenes) == {"train", "test"}
    assert scenes["train"].num_rows == 300 and scenes["test"].num_rows == 60
    train = scenes["train"]
    assert train.column_names == ["image", "caption", "captions", "shape", "color", "size", "position", "texture",
                                  "background", "num_objects", "objects"]
    assert isinstance(train.features["image"], Image)
    for name, names in SCENE_ATTRIBUTES.items():
        assert train.features[name] == ClassLabel(names=names)
    pixels = read_images(train)
    assert pixels.shape == (300, 64, 64, 3) and pixels.dtype == np.uint8


def test_objects_labels_and_captions_agree(scenes):
    train = scenes["train"]
    counts = np.array(train["num_objects"])
    assert set(counts) == {1, 2, 3}
    for row in train:
        objects = row["objects"]
        main = objects[0]
        assert len(objects) == row["num_objects"]
        for name in ("shape", "color", "size", "position", "texture"):
            assert SCENE_ATTRIBUTES[name][row[name]] == main[name]
        # Distinct positions, shapes and colours; the main object is never the smaller one.
        for name in ("position", "shape", "color"):
            assert len({o[name] for o in objects}) == len(objects)
        assert not (main["size"] == "small" and any(o["size"] == "large" for o in objects))
        assert row["caption"] in row["captions"] and len(row["captions"]) == 8
        assert all(f"{main['color']} {main['shape']}" in c for c in row["captions"])  # every style names it
        for obj in objects:
            assert f"{obj['color']} {obj['shape']}" in row["captions"][2]  # "there is a ... and a ..."
        texture = "" if main["texture"] == "solid" else main["texture"] + " "
        assert row["captions"][1].endswith(f"{main['size']} {texture}{main['color']} {main['shape']}")
    styles = [row["captions"].index(row["caption"]) for row in train]
    assert len(set(styles)) == 8  # the row caption is drawn from every style


def test_main_object_is_drawn_in_its_colour_and_place(scenes):
    train = scenes["train"]
    pixels = read_images(train)
    centres = {"left": (0.5, 0.22), "right": (0.5, 0.78), "top": (0.22, 0.5), "bottom": (0.78, 0.5), "centre": (0.5, 0.5)}
    for image, row in zip(pixels, train):
        main = row["objects"][0]
        hit = (image == np.array(RGB[main["color"]], np.uint8)).all(axis=-1)
        assert hit.sum() >= (8 if main["size"] == "small" else 25)
        ys, xs = np.nonzero(hit)
        fy, fx = centres[main["position"]]
        # The colour's centre of mass sits on the main object (other objects have other colours).
        assert abs(ys.mean() - fy * 64) < 8 and abs(xs.mean() - fx * 64) < 8


def test_shapes_differ_in_their_masks():
    # One large solid object per scene at the centre: the shapes' filled areas must differ.
    ds = render_scenes(400, max_objects=1, seed=1)
    areas = {}
    for image, row in zip(read_images(ds), ds):
        main = row["objects"][0]
        if main["size"] == "large" and main["texture"] == "solid":
            areas.setdefault(main["shape"], []).append((image == np.array(RGB[main["color"]], np.uint8)).all(-1).sum())
    means = {shape: np.mean(a) for shape, a in areas.items()}
    assert set(means) == set(SCENE_SHAPES)
    assert means["star"] < means["circle"] and means["cross"] < means["square"]


def test_determinism_seeds_and_split_independence():
    a, b = load_scenes(num_train=40, num_test=20, seed=3), load_scenes(num_train=40, num_test=20, seed=3)
    assert a["train"][:] == b["train"][:] and a["test"][:] == b["test"][:]
    c = load_scenes(num_train=40, num_test=20, seed=4)
    assert a["train"]["caption"] != c["train"]["caption"]
    bigger = load_scenes(num_train=80, num_test=20, seed=3)
    assert bigger["test"][:] == a["test"][:]  # the test split does not move with num_train
    g1 = load_scenes(num_train=10, num_test=5, seed=np.random.default_rng(0))
    g2 = load_scenes(num_train=10, num_test=5, seed=np.random.default_rng(0))
    assert g1["train"][:] == g2["train"][:]


def test_single_object_test_split_and_sizes():
    ds = load_scenes(num_train=30, num_test=30, test_max_objects=1, image_size=32, seed=0)
    assert set(ds["test"]["num_objects"]) == {1} and max(ds["train"]["num_objects"]) > 1
    assert read_images(ds["test"]).shape == (30, 32, 32, 3)
    assert load_scenes(num_train=0, num_test=2)["train"].num_rows == 0


def test_zero_shot_classes_match_the_labels(scenes):
    for attribute in ("shape", "color", "size", "texture", "background"):
        names, templates = scene_zero_shot_classes(attribute)
        assert len(names) == scenes["test"].features[attribute].num_classes
        assert all(t.count("{}") == 1 for t in templates) and len(templates) >= 2
    names, templates = scene_zero_shot_classes()
    assert names == SCENE_SHAPES and templates[0].format(names[0]) == "a photo of a circle."
    assert scene_zero_shot_classes("color")[0] == SCENE_COLORS
    with pytest.raises(ValueError, match="`attribute`"):
        scene_zero_shot_classes("position")


def test_errors():
    with pytest.raises(ValueError, match="max_objects"):
        load_scenes(num_train=2, num_test=2, max_objects=6)
    with pytest.raises(ValueError, match="max_objects"):
        load_scenes(num_train=2, num_test=2, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="image_size"):
        load_scenes(num_train=2, num_test=2, image_size=8)
    with pytest.raises(ValueError, match="num_scenes"):
        render_scenes(-1)
    with pytest.raises(ValueError, match="num_train"):
        load_scenes(num_train=-1, num_test=2)
    with pytest.raises(ValueError, match="num_test"):
        load_scenes(num_train=2, num_test=2.5)
    with pytest.raises(ValueError, match="test_max_objects"):
        load_scenes(num_train=2, num_test=2, test_max_objects=0)
    with pytest.raises(ValueError, match="seed"):
        load_scenes(num_train=2, num_test=2, seed=1.5)
