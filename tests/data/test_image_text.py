import io
import tarfile

import numpy as np
import pytest
from datasets import Array3D, Dataset, DatasetDict, Features, Image, Value

from hf_prune.data.image_text import check_image_text, load_image_text


def png(value=0, size=6):
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(np.full((size, size, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def pairs(n=12, captions=None, images=None):
    features = Features({"image": Image(), "caption": Value("string")})
    return Dataset.from_dict({
        "image": images if images is not None else [{"bytes": png(i % 25 * 10, size=4 + i % 3), "path": None}
                                                    for i in range(n)],
        "caption": captions if captions is not None else [f"caption {i}" for i in range(n)],
    }, features=features)


def write_shard(path, n=5, image_ext="jpg", text_ext="txt"):
    from PIL import Image as PILImage

    with tarfile.open(path, "w") as tar:
        for i in range(n):
            buffer = io.BytesIO()
            PILImage.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(buffer, format="JPEG")
            for ext, data in ((image_ext, buffer.getvalue()), (text_ext, f"a shard caption {i}".encode())):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_a_good_pool_passes_unchanged():
    ds = pairs()
    assert check_image_text(ds) is ds  # images of different sizes are fine
    dd = DatasetDict({"train": ds, "test": pairs(3)})
    assert check_image_text(dd) is dd


def test_missing_column_names_it_and_lists_the_columns():
    ds = pairs()
    with pytest.raises(KeyError, match=r"'text' not found.*\['image', 'caption'\]"):
        check_image_text(ds, text_column="text")
    with pytest.raises(KeyError, match="'jpg'"):
        check_image_text(ds, image_column="jpg")


def test_bad_captions_name_the_column_and_rows():
    captions = [f"c {i}" for i in range(12)]
    captions[3], captions[7], captions[9] = "", "   ", None
    with pytest.raises(ValueError, match=r"'caption' has 1 null \(non-string\) captions at rows \[9\] and "
                                         r"2 empty or blank captions at rows \[3, 7\]"):
        check_image_text(pairs(captions=captions))
    many = [""] * 12
    with pytest.raises(ValueError, match=r"12 empty or blank captions at rows \[0, 1, 2, 3, 4, \.\.\.\]"):
        check_image_text(pairs(captions=many))
    numbers = Dataset.from_dict({"image": pairs()["image"], "caption": list(range(12))},
                                features=Features({"image": Image(), "caption": Value("int64")}))
    with pytest.raises(ValueError, match="'caption' holds .*int64.*must be strings"):
        check_image_text(numbers)
    with pytest.raises(ValueError, match="all 12 rows are null"):
        check_image_text(Dataset.from_dict({"image": pairs()["image"], "caption": [None] * 12}))


def test_undecodable_images_name_the_column_and_rows():
    from PIL import Image as PILImage

    images = [{"bytes": png(i), "path": None} for i in range(12)]
    images[4] = {"bytes": b"not an image", "path": None}
    noise = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(noise, format="PNG")
    images[8] = {"bytes": noise.getvalue()[:400], "path": None}  # truncated: the header opens, the pixels fail
    ds = pairs(images=images)
    with pytest.raises(ValueError, match=r"'image' has 2 undecodable images at rows \[4, 8\] \(of 12 checked"):
        check_image_text(ds)
    # A sample that misses the bad rows passes; sample_size=None checks every row.
    ok = pairs(n=500)
    bad = ok.to_dict()
    bad["image"][250] = {"bytes": b"junk", "path": None}
    bad = Dataset.from_dict(bad, features=ok.features)
    with pytest.raises(ValueError, match=r"rows \[250\]"):
        check_image_text(bad, sample_size=None)
    found = 0
    for seed in range(20):
        try:
            check_image_text(bad, sample_size=50, seed=seed)
        except ValueError:
            found += 1
    assert 0 < found < 20  # each sample of 50 of 500 rows hits row 250 with probability 0.1


def test_array_image_columns_use_the_pixel_rules():
    features = Features({"image": Array3D((4, 4, 3), "int64"), "caption": Value("string")})
    good = Dataset.from_dict({"image": np.zeros((3, 4, 4, 3), np.int64).tolist(), "caption": ["a", "b", "c"]},
                             features=features)
    assert check_image_text(good) is good
    bad = Dataset.from_dict({"image": np.full((3, 4, 4, 3), 300).tolist(), "caption": ["a", "b", "c"]},
                            features=features)
    with pytest.raises(ValueError, match="'image' must hold uint8"):
        check_image_text(bad)


def test_check_errors():
    with pytest.raises(ValueError, match="empty"):
        check_image_text(pairs().select([]))
    with pytest.raises(ValueError, match="sample_size"):
        check_image_text(pairs(), sample_size=0)
    with pytest.raises(ValueError, match="both 'image'"):
        check_image_text(pairs(), text_column="image")
    with pytest.raises(KeyError, match="split 'test'"):
        check_image_text(DatasetDict({"train": pairs(), "test": pairs().rename_column("caption", "text")}))


def test_load_webdataset_shards(tmp_path):
    write_shard(tmp_path / "shard-00000.tar")
    write_shard(tmp_path / "shard-00001.tar", n=3)
    files = {"train": [str(tmp_path / "shard-00000.tar"), str(tmp_path / "shard-00001.tar")]}
    ds = load_image_text("webdataset", data_files=files, image_column="jpg", text_column="txt")
    assert isinstance(ds, DatasetDict) and ds["train"].num_rows == 8
    assert ds["train"].column_names[:2] == ["image", "caption"]
    assert ds["train"][0]["caption"] == "a shard caption 0" and ds["train"][0]["image"].size == (8, 8)
    one = load_image_text("webdataset", data_files=files, image_column="jpg", text_column="txt", split="train",
                          rename=False)
    assert isinstance(one, Dataset) and "jpg" in one.column_names
    with pytest.raises(KeyError, match=r"column 'caption' not found in split 'train'.*'txt'"):
        load_image_text("webdataset", data_files=files, image_column="jpg")


def test_load_from_disk_and_in_hand(tmp_path):
    dd = DatasetDict({"train": pairs().rename_column("caption", "alt"), "test": pairs(4).rename_column("caption", "alt")})
    dd.save_to_disk(str(tmp_path / "saved"))
    loaded = load_image_text(tmp_path / "saved", text_column="alt")
    assert set(loaded) == {"train", "test"} and loaded["test"].column_names == ["image", "caption"]
    assert load_image_text(dd, text_column="alt", split="test").num_rows == 4
    with pytest.raises(KeyError, match="split 'valid'"):
        load_image_text(dd, text_column="alt", split="valid")
    clash = dd["train"].add_column("caption", ["x"] * 12)
    with pytest.raises(ValueError, match="cannot rename"):
        load_image_text(clash, text_column="alt")
    broken = pairs(captions=["ok"] * 11 + [""]).rename_column("caption", "alt")
    with pytest.raises(ValueError, match=r"split 'train': column 'alt' has 1 empty"):
        load_image_text(broken, text_column="alt")
    assert load_image_text(broken, text_column="alt", check=False)["train"].num_rows == 12
    with pytest.raises(ValueError, match="streaming"):
        load_image_text("webdataset", data_files={"train": "x.tar"}, streaming=True)
