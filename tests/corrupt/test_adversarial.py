import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image

from hf_prune.corrupt import adversarial_attack, fgsm, pgd
from hf_prune.data import load_digits, read_images


@pytest.fixture(scope="module")
def digits_and_model():
    """sklearn digits and a linear classifier trained on them (≈95% train accuracy)."""
    ds = load_digits(seed=0)["train"]
    x = torch.from_numpy(read_images(ds)).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor(ds["label"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return ds, model


def accuracy(model, ds, rows):
    x = torch.from_numpy(read_images(ds, indices=rows)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return (model(x).argmax(1).numpy() == np.array(ds["label"])[rows]).mean()


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_attack_lowers_accuracy_within_the_budget(digits_and_model, method):
    ds, model = digits_and_model
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    # 8×8 digits have few pixels, so the L∞ budget must be larger than CIFAR's 8/255 to flip most predictions.
    out = adversarial_attack(
        ds, model=model, rate=0.25, method=method, epsilon=32 / 255, step_size=8 / 255, seed=0, device="cpu"
    )
    flags = np.array(out["is_adversarial"])
    rows = np.flatnonzero(flags)
    assert len(rows) == round(0.25 * len(ds))
    clean, attacked = read_images(ds).astype(int), read_images(out).astype(int)
    np.testing.assert_array_equal(attacked[~flags], clean[~flags])
    assert np.abs(attacked - clean).max() <= 32  # stored perturbation within ε (in pixel levels)
    assert accuracy(model, ds, rows) > 0.9
    assert accuracy(model, out, rows) < 0.5  # the attack works on the rows it touched
    # The model is left as it was: same weights, no gradients, training mode restored.
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters()) and model.training


def test_pgd_is_at_least_as_strong_as_fgsm(digits_and_model):
    ds, model = digits_and_model
    eps = 6 / 255
    a = fgsm(ds, model=model, rate=0.5, epsilon=eps, seed=0, device="cpu")
    b = pgd(ds, model=model, rate=0.5, epsilon=eps, step_size=1.5 / 255, steps=10, seed=0, device="cpu")
    rows = np.flatnonzero(np.array(a["is_adversarial"]))
    assert (rows == np.flatnonzero(np.array(b["is_adversarial"]))).all()  # same seed → same rows
    assert accuracy(model, b, rows) <= accuracy(model, a, rows)


def test_fgsm_hand_computed_on_a_linear_model():
    # Two classes, logits = W x with W = ±1 on the first pixel and ±0.5 on the second: the CE gradient of
    # label 0 with respect to x is (p − onehot)ᵀW, whose sign is (−, −) for pixel 0 and 1 and 0 elsewhere.
    model = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.5, 0.0, 0.0], [-1.0, -0.5, 0.0, 0.0]]))
    net = torch.nn.Sequential(torch.nn.Flatten(), model)
    pixels = np.array([[[100, 100], [100, 100]]], np.uint8)
    ds = Dataset.from_dict({"image": list(pixels), "label": [0]}, features=Features({"image": Image(), "label": ClassLabel(num_classes=2)}))
    out = fgsm(ds, model=net, rate=1.0, epsilon=8 / 255, device="cpu")
    np.testing.assert_array_equal(read_images(out)[0, ..., 0], [[92, 92], [100, 100]])


def test_determinism_and_random_start(digits_and_model):
    ds, model = digits_and_model
    a = pgd(ds, model=model, rate=0.1, steps=2, seed=3, device="cpu")
    b = pgd(ds, model=model, rate=0.1, steps=2, seed=3, device="cpu")
    c = pgd(ds, model=model, rate=0.1, steps=2, seed=4, device="cpu")
    np.testing.assert_array_equal(read_images(a), read_images(b))
    assert a["is_adversarial"] != c["is_adversarial"]


def test_transformers_style_output_and_preprocess(digits_and_model):
    ds, model = digits_and_model

    class Output:
        def __init__(self, logits):
            self.logits = logits

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return Output(self.inner(x))

    seen = []

    def preprocess(x):
        seen.append(x.shape)
        return x

    out = fgsm(ds, model=Wrapped(), rate=0.05, preprocess=preprocess, device="cpu", batch_size=16)
    assert np.array(out["is_adversarial"]).sum() == round(0.05 * len(ds))
    assert seen and all(s[0] <= 16 for s in seen)


def test_errors(digits_and_model):
    ds, model = digits_and_model
    with pytest.raises(ValueError, match="method"):
        adversarial_attack(ds, model=model, rate=0.1, method="cw")
    with pytest.raises(ValueError, match="epsilon"):
        fgsm(ds, model=model, rate=0.1, epsilon=0)
    with pytest.raises(ValueError, match="steps"):
        pgd(ds, model=model, rate=0.1, steps=0)
    with pytest.raises(ValueError, match="rate"):
        fgsm(ds, model=model, rate=2)
    with pytest.raises(TypeError, match="Module"):
        fgsm(ds, model=lambda x: x, rate=0.1)
    with pytest.raises(KeyError, match="target"):
        fgsm(ds, model=model, rate=0.1, label_column="target")


def test_flag_column_must_differ_from_the_source_columns(digits_and_model):
    # Regression: flag_column="image" with overwrite=True used to overwrite the images with the flags.
    ds, model = digits_and_model
    for column in ("image", "label"):
        with pytest.raises(ValueError, match=f"`flag_column` must differ from .*`{column}_column`"):
            fgsm(ds, model=model, rate=0.1, flag_column=column, overwrite=True, device="cpu")
