import io

import numpy as np
import pytest
import torch
import transformers as T
from datasets import Dataset, Value
from datasets import Image as ImageFeature
from PIL import Image

import hf_prune as hp
from hf_prune.embed.image import load_image
from hf_prune.ops.columns import embedding_feature

# The PIL backend of the image processors: no torchvision needed.
ViTProcessor = getattr(T, "ViTImageProcessorPil", T.ViTImageProcessor)


def processor(size=32):
    return ViTProcessor(size={"height": size, "width": size})


def tiny_dinov2(seed=0, **kw):
    torch.manual_seed(seed)
    config = T.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                            image_size=32, patch_size=8, **kw)
    return T.Dinov2Model(config).eval()


def rgb_images(n=7, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + i, 36, 3), dtype=np.uint8)) for i in range(n)]


def image_dataset(images):
    return Dataset.from_dict({"image": images, "idx": list(range(len(images)))}).cast_column("image", ImageFeature())


def direct(model, images, proc=None):
    pixel_values = (proc or processor())(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixel_values), pixel_values


@pytest.fixture(scope="module")
def dinov2():
    return tiny_dinov2()


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler", "auto"])
def test_dinov2_equals_direct_forward(dinov2, pooling):
    images = rgb_images()
    ds = image_dataset(images)
    emb = hp.embed.ImageEmbedder(dinov2, processor=processor(), pooling=pooling, batch_size=3)
    out = emb.map(ds, batch_size=5)
    got = np.asarray(out["emb"])
    outputs, _ = direct(dinov2, images)
    hidden = outputs.last_hidden_state
    expected = {
        "cls": hidden[:, 0],
        "auto": hidden[:, 0],  # DINOv2 has a CLS token before its 16 patch tokens
        "mean": hidden[:, 1:].mean(1),  # 32/8 = 4x4 patches, CLS left out
        "pooler": outputs.pooler_output,
    }[pooling].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert out.features["emb"] == embedding_feature(32)
    assert out.features["emb"].length == 32 and out.features["emb"].feature == Value("float32")
    assert out.column_names == ["image", "idx", "emb"]


def test_normalize_and_mean_skips_register_tokens():
    if not hasattr(T, "Dinov2WithRegistersModel"):
        pytest.skip("this transformers version has no Dinov2WithRegistersModel")
    torch.manual_seed(0)
    model = T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32,
        patch_size=8, num_register_tokens=4)).eval()
    images = rgb_images(4)
    got = np.asarray(hp.embed.ImageEmbedder(model, processor=processor(), pooling="mean", normalize=True)
                     .map(image_dataset(images))["emb"])
    hidden = direct(model, images)[0].last_hidden_state
    assert hidden.shape[1] == 1 + 4 + 16
    expected = torch.nn.functional.normalize(hidden[:, 5:].mean(1), dim=1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_resnet_feature_map_pooling():
    torch.manual_seed(0)
    model = T.ResNetModel(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")).eval()
    images = rgb_images(3)
    ds = image_dataset(images)
    outputs, _ = direct(model, images)
    auto = np.asarray(hp.embed.ImageEmbedder(model, processor=processor()).map(ds)["emb"])
    np.testing.assert_allclose(auto, outputs.last_hidden_state.mean((2, 3)).numpy(), rtol=1e-5, atol=1e-5)
    pooler = np.asarray(hp.embed.ImageEmbedder(model, processor=processor(), pooling="pooler").map(ds)["emb"])
    np.testing.assert_allclose(pooler, outputs.pooler_output.flatten(1).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no CLS token"):
        hp.embed.ImageEmbedder(model, processor=processor(), pooling="cls")


def test_model_with_head_uses_base_model():
    torch.manual_seed(0)
    config = T.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                         image_size=32, patch_size=8, num_labels=3)
    model = T.ViTForImageClassification(config).eval()
    images = rgb_images(3)
    got = np.asarray(hp.embed.ImageEmbedder(model, processor=processor()).map(image_dataset(images))["emb"])
    expected = direct(model.vit, images)[0].last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The classification head's ViT has no pooler: asking for one is a clear error.
    with pytest.raises(ValueError, match="pooler_output"):
        hp.embed.ImageEmbedder(model, processor=processor(), pooling="pooler")


def test_input_types_give_the_same_embedding(dinov2):
    rgb = rgb_images(3)
    arrays = [np.asarray(im) for im in rgb]
    png = []
    for im in rgb:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        png.append(buf.getvalue())
    emb = hp.embed.ImageEmbedder(dinov2, processor=processor())
    reference = np.asarray(emb.map(image_dataset(rgb))["emb"])
    variants = {
        "uint8 HWC arrays": Dataset.from_dict({"image": arrays}),
        "float CHW arrays in [0,1]": Dataset.from_dict({"image": [a.transpose(2, 0, 1) / 255.0 for a in arrays]}),
        "png bytes": Dataset.from_dict({"image": png}),
        "undecoded Image column": image_dataset(rgb).cast_column("image", ImageFeature(decode=False)),
    }
    for name, ds in variants.items():
        got = np.asarray(emb.map(ds)["emb"])
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5, err_msg=name)


def test_grayscale_inputs(dinov2):
    rng = np.random.default_rng(1)
    gray = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(3)]
    as_rgb = [Image.fromarray(np.repeat(g[..., None], 3, axis=2)) for g in gray]
    emb = hp.embed.ImageEmbedder(dinov2, processor=processor())
    reference = np.asarray(emb.map(image_dataset(as_rgb))["emb"])
    for ds in (image_dataset([Image.fromarray(g, mode="L") for g in gray]), Dataset.from_dict({"image": gray})):
        np.testing.assert_allclose(np.asarray(emb.map(ds)["emb"]), reference, rtol=1e-5, atol=1e-5)
    # A one-channel model gets grayscale images, even from RGB inputs.
    torch.manual_seed(0)
    mono = T.Dinov2Model(T.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
                                        image_size=32, patch_size=8, num_channels=1)).eval()
    proc1 = ViTProcessor(size={"height": 32, "width": 32}, image_mean=[0.5], image_std=[0.5])
    got = np.asarray(hp.embed.ImageEmbedder(mono, processor=proc1).map(image_dataset(as_rgb))["emb"])
    pv = proc1(images=[Image.fromarray(g, mode="L") for g in gray], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        np.testing.assert_allclose(got, mono(pixel_values=pv).last_hidden_state[:, 0].numpy(), rtol=1e-5, atol=1e-5)


def test_load_image_conventions():
    assert load_image(np.full((2, 3), 7, np.uint8), column="c", position=0).getpixel((0, 0)) == (7, 7, 7)
    assert load_image(np.full((3, 2, 3), 0.5), column="c", position=0).getpixel((0, 0)) == (128, 128, 128)
    rgba = Image.new("RGBA", (2, 2), (10, 20, 30, 40))
    assert load_image(rgba, column="c", position=0).mode == "RGB"
    with pytest.raises(ValueError, match=r"column 'pics', row 4 of the batch"):
        load_image(b"not an image", column="pics", position=4)
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((2, 2, 2, 2)), column="c", position=0)


def test_bad_inputs(dinov2):
    ds = image_dataset(rgb_images(3))
    emb = hp.embed.ImageEmbedder(dinov2, processor=processor())
    with pytest.raises(KeyError, match="'pixels'"):
        hp.embed.ImageEmbedder(dinov2, processor=processor(), image_column="pixels").map(ds)
    with pytest.raises(ValueError, match="pooling"):
        hp.embed.ImageEmbedder(dinov2, processor=processor(), pooling="max")
    with pytest.raises(ValueError, match="processor"):
        hp.embed.ImageEmbedder(dinov2)
    with pytest.raises(ValueError, match="empty"):
        emb.map(ds.select([]))
    # A CLIP model is not a vision backbone: the error names it.
    clip = T.CLIPModel(T.CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2, vocab_size=10,
                         max_position_embeddings=8, eos_token_id=2, bos_token_id=1, pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=8))
    with pytest.raises(ValueError, match="CLIPModel"):
        hp.embed.ImageEmbedder(clip, processor=processor())
    # An unreadable image in the middle: a clear error and the input untouched.
    broken = Dataset.from_dict({"image": [np.zeros((8, 8), np.uint8).tolist(), None, [[1, 2], [3, 4]]]})
    with pytest.raises(ValueError, match=r"column 'image', row 1"):
        emb.map(broken)
    assert broken.column_names == ["image"]
    # Output column already there: refuse unless overwrite=True.
    out = emb.map(ds)
    with pytest.raises(ValueError, match="overwrite=True"):
        emb.map(out)
    again = emb.map(out, overwrite=True)
    assert again.column_names == out.column_names
    np.testing.assert_allclose(np.asarray(again["emb"]), np.asarray(out["emb"]))


def test_autocast_dtype_is_honoured(dinov2):
    ds = image_dataset(rgb_images(4))
    fp32 = np.asarray(hp.embed.ImageEmbedder(dinov2, processor=processor(), dtype=torch.float32).map(ds)["emb"])
    bf16 = np.asarray(hp.embed.ImageEmbedder(dinov2, processor=processor(), dtype="bfloat16").map(ds)["emb"])
    assert not np.array_equal(fp32, bf16)  # autocast ran in bfloat16
    np.testing.assert_allclose(bf16, fp32, atol=0.1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            hp.embed.ImageEmbedder(dinov2, processor=processor(), device="cuda")
