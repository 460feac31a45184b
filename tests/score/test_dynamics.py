import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets import Dataset, DatasetInfo, Features, Value
from datasets.table import InMemoryTable

import hf_prune as hp
import hf_prune.score.dynamics as dyn
from hf_prune.dynamics import DYNAMICS_FIELDS, DynamicsRecorder, dynamics_features
from tests.conftest import make_dataset


def plain(probs) -> Dataset:
    """A plain fixed-length list column of true-class probabilities."""
    return make_dataset(dynamics=np.asarray(probs, dtype=np.float32))


def struct(**fields) -> Dataset:
    """A struct dynamics column from ``(N, T)`` arrays; missing fields are zeros."""
    first = np.asarray(next(iter(fields.values())))
    n, t = first.shape
    children = [
        pa.FixedSizeListArray.from_arrays(
            pa.array(np.asarray(fields.get(name, np.zeros((n, t))), dtype=np.float32).reshape(-1)), t
        )
        for name in DYNAMICS_FIELDS
    ]
    table = pa.table({"dynamics": pa.StructArray.from_arrays(children, names=list(DYNAMICS_FIELDS))})
    features = Features({"dynamics": dynamics_features(t)})
    return Dataset(InMemoryTable(table.cast(features.arrow_schema)), info=DatasetInfo(features=features))


def direct_dual_and_dyn_unc(P, J):
    """Eq. 1–4 with explicit loops over samples, windows and epochs."""
    n, T = len(P), len(P[0])
    dual, unc = [], []
    for i in range(n):
        dual_sum = unc_sum = 0.0
        for k in range(T - J + 1):
            mean = sum(P[i][k + j] for j in range(J)) / J
            u = math.sqrt(sum((P[i][k + j] - mean) ** 2 for j in range(J)) / (J - 1))
            dual_sum += (1 - mean) * u
            unc_sum += u
        dual.append(dual_sum / (T - J + 1))
        unc.append(unc_sum / (T - J + 1))
    return np.array(dual), np.array(unc)


@pytest.fixture(scope="module")
def recorded():
    """Dynamics recorded from random logits over 12 epochs, with the raw logits kept for checks."""
    g = torch.Generator().manual_seed(0)
    n, c, T = 64, 5, 12
    labels = torch.randint(0, c, (n,), generator=g)
    rec = DynamicsRecorder(num_rows=n, num_classes=c)
    logits = []
    for t in range(T):
        z = torch.randn(n, c, generator=g) * 2.0
        z[torch.arange(n), labels] += 0.3 * t  # slowly learned, with flips both ways
        order = torch.randperm(n, generator=g)  # batches in shuffled order, as in training
        for batch in order.split(16):
            rec.update(batch, z[batch], labels[batch])
        rec.end_epoch()
        logits.append(z)
    return rec.to_dataset(), torch.stack(logits).double(), labels


def test_dual_and_dyn_unc_hand_values():
    # One window over (0.2, 0.4, 0.6): mean 0.4, sample std 0.2 -> DUAL 0.6*0.2, Dyn-Unc 0.2.
    ds = plain([[0.2, 0.4, 0.6], [0.7, 0.7, 0.7]])
    out = hp.score.dual(hp.score.dyn_unc(ds, window=3), dynamics_column="dynamics", window=3)
    np.testing.assert_allclose(out["dual"], [0.12, 0.0], atol=1e-7)
    np.testing.assert_allclose(out["dyn_unc"], [0.2, 0.0], atol=1e-7)
    assert out.features["dual"] == Value("float32") and out.features["dyn_unc"] == Value("float32")


def test_dual_and_dyn_unc_equal_eq3_eq4():
    P = [
        [0.05, 0.1, 0.3, 0.2, 0.6, 0.8, 0.9],
        [0.5, 0.55, 0.5, 0.9, 0.95, 1.0, 1.0],
        [0.0, 0.01, 0.0, 0.02, 0.0, 0.05, 0.1],
        [0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9],
    ]
    for J in (2, 3, 5, 7):
        expect_dual, expect_unc = direct_dual_and_dyn_unc(P, J)
        out = hp.score.dyn_unc(hp.score.dual(plain(P), window=J), window=J)
        np.testing.assert_allclose(out["dual"], expect_dual, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(out["dyn_unc"], expect_unc, rtol=1e-5, atol=1e-7)


def test_dual_prefers_the_hard_uncertain_sample_early():
    # The paper's point (Fig. 2, Thm 3.1): early in training Dyn-Unc ranks an easy sample that is
    # already rising fast above a hard one that has just started moving; DUAL's (1 - mean) factor
    # reverses that.
    easy = [0.50, 0.60, 0.70, 0.80, 0.85]
    hard = [0.05, 0.12, 0.20, 0.28, 0.35]
    out = hp.score.dyn_unc(hp.score.dual(plain([easy, hard]), window=5), window=5)
    assert out["dyn_unc"][0] > out["dyn_unc"][1]
    assert out["dual"][1] > out["dual"][0] * 1.5


def test_scores_match_direct_formulas_from_logits(recorded):
    ds, logits, labels = recorded
    T, n, c = logits.shape
    probs = torch.softmax(logits, dim=2)
    onehot = torch.nn.functional.one_hot(labels, c).double()
    rows = torch.arange(n)
    true_prob = probs[:, rows, labels]
    other = probs.clone()
    other[:, rows, labels] = -1
    other_logit = logits.clone()
    other_logit[:, rows, labels] = -math.inf

    expect = {
        "el2n": (probs - onehot).norm(dim=2).mean(0),
        "entropy": (-(probs * probs.log()).sum(2)).mean(0),
        "aum": (logits[:, rows, labels] - other_logit.max(2).values).mean(0),
        "margin": (true_prob - other.max(2).values).mean(0),
    }
    for name, expected in expect.items():
        out = getattr(hp.score, name)(ds, dynamics_column="dynamics")
        np.testing.assert_allclose(out[name], expected.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)

    # Forgetting: correct at t, wrong at t+1; never-correct samples get T.
    correct = (logits.argmax(2) == labels).numpy()
    forgets = np.zeros(n)
    for i in range(n):
        forgets[i] = sum(correct[t, i] and not correct[t + 1, i] for t in range(T - 1))
        if not correct[:, i].any():
            forgets[i] = T
    out = hp.score.forgetting(ds)
    np.testing.assert_array_equal(out["forgetting"], forgets)
    assert 0 < forgets.max() and (forgets > 0).sum() < n  # the data exercises both branches

    # DUAL / Dyn-Unc from the same record against the loop formula.
    expect_dual, expect_unc = direct_dual_and_dyn_unc(true_prob.T.tolist(), 4)
    out = hp.score.dyn_unc(hp.score.dual(ds, window=4), window=4)
    np.testing.assert_allclose(out["dual"], expect_dual, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["dyn_unc"], expect_unc, rtol=1e-4, atol=1e-6)


def test_tdds_matches_a_direct_loop(recorded):
    ds, logits, _ = recorded
    probs = torch.softmax(logits, dim=2).numpy()
    T = probs.shape[0]
    for J, decay in [(4, 0.9), (6, 0.5), (T, 0.3)]:
        expected = np.zeros(probs.shape[1])
        for k in range(T - J + 1):
            kls = [(probs[t] * (np.log(probs[t]) - np.log(probs[t - 1]))).sum(1) for t in range(k + 1, k + J)]
            mean = sum(kls) / len(kls)
            spread = np.sqrt(sum((x - mean) ** 2 for x in kls))
            expected += decay * (1 - decay) ** (T - J - k) * spread
        out = hp.score.tdds(ds, window=J, decay=decay)
        np.testing.assert_allclose(out["tdds"], expected, rtol=1e-3, atol=1e-6)


def test_tdds_hand_values():
    # T=4, J=3: windows use KL of epochs (1,2) and (2,3). Spreads: |1-3|/sqrt(2)=sqrt(2), |3-3|...=0.
    kl = np.array([[0.0, 1.0, 3.0, 3.0]])
    out = hp.score.tdds(struct(kl_to_previous=kl), window=3, decay=0.5)
    # 0.5*(0.5)^1*sqrt(2) + 0.5*(0.5)^0*0
    np.testing.assert_allclose(out["tdds"], [0.25 * math.sqrt(2)], rtol=1e-6)
    # decay=1 keeps only the latest window.
    np.testing.assert_allclose(hp.score.tdds(struct(kl_to_previous=kl), window=3, decay=1.0)["tdds"], [0.0])


def test_forgetting_on_hand_sequences():
    correct = np.array([
        [1, 0, 1, 0, 1],  # two forgetting events
        [0, 0, 1, 1, 1],  # learned, never forgotten
        [0, 0, 0, 0, 0],  # never learned -> T = 5
        [1, 1, 1, 1, 0],  # one event at the end
    ])
    out = hp.score.forgetting(struct(correct=correct))
    np.testing.assert_array_equal(out["forgetting"], [2, 0, 5, 1])
    # Restricting the epochs restricts the events, and T is the number of epochs used.
    out = hp.score.forgetting(struct(correct=correct), epochs=slice(0, 2))
    np.testing.assert_array_equal(out["forgetting"], [1, 2, 2, 0])


def test_epoch_selection(recorded):
    ds, logits, labels = recorded
    probs = torch.softmax(logits, dim=2)
    el2n_epoch3 = (probs[3] - torch.nn.functional.one_hot(labels, 5)).norm(dim=1)
    np.testing.assert_allclose(hp.score.el2n(ds, epochs=3)["el2n"], el2n_epoch3.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        hp.score.el2n(ds, epochs=-1)["el2n"], hp.score.el2n(ds, epochs=[11])["el2n"], rtol=1e-6
    )
    true_prob = probs[:, torch.arange(64), labels].T.tolist()
    first_six = [row[:6] for row in true_prob]
    np.testing.assert_allclose(
        hp.score.dual(ds, window=3, epochs=slice(0, 6))["dual"], direct_dual_and_dyn_unc(first_six, 3)[0],
        rtol=1e-4, atol=1e-6,
    )
    for bad in (12, -13, slice(5, 5), "all", [0, 99], True):
        with pytest.raises(ValueError, match="epochs"):
            hp.score.el2n(ds, epochs=bad)


def test_chunked_computation_matches(monkeypatch):
    P = np.random.default_rng(1).random((50, 9))
    whole = dyn.dual_from_probs(P, 4), dyn.dyn_unc_from_probs(P, 4), dyn.tdds_from_kl(P, 4, 0.8)
    monkeypatch.setattr(dyn, "CHUNK", 7)
    chunked = dyn.dual_from_probs(P, 4), dyn.dyn_unc_from_probs(P, 4), dyn.tdds_from_kl(P, 4, 0.8)
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_shuffled_view_and_input_untouched(recorded):
    ds, _, _ = recorded
    view = ds.shuffle(seed=0)
    before = view.column_names
    out = hp.score.aum(view)
    assert view.column_names == before and "aum" in out.column_names
    np.testing.assert_allclose(
        np.array(out["aum"])[np.argsort(view["row_id"])], hp.score.aum(ds)["aum"], rtol=1e-6
    )


def test_window_errors(recorded):
    ds, _, _ = recorded
    with pytest.raises(ValueError, match="window.*larger than the number of recorded epochs"):
        hp.score.dual(ds, window=13)
    with pytest.raises(ValueError, match="window"):
        hp.score.dyn_unc(ds, window=1)
    with pytest.raises(ValueError, match="window"):
        hp.score.dual(ds, window=4, epochs=slice(0, 3))
    with pytest.raises(ValueError, match="window"):
        hp.score.tdds(ds, window=2)
    with pytest.raises(ValueError, match="window"):
        hp.score.tdds(ds, window=13)
    with pytest.raises(ValueError, match="decay"):
        hp.score.tdds(ds, window=3, decay=0.0)
    with pytest.raises(ValueError, match="consecutive"):
        hp.score.tdds(ds, window=3, epochs=[0, 2, 4, 6])


def test_input_errors(recorded):
    ds, _, _ = recorded
    lists = plain([[0.1, 0.2, 0.3]])
    for fn, field in [
        (hp.score.el2n, "el2n"), (hp.score.forgetting, "correct"), (hp.score.aum, "logit_margin"),
        (hp.score.entropy, "entropy"), (hp.score.margin, "max_other_prob"), (hp.score.tdds, "kl_to_previous"),
    ]:
        with pytest.raises(KeyError, match=field):
            fn(lists, **({"window": 3} if fn is hp.score.tdds else {}))
    for fn in (hp.score.dual, hp.score.el2n):
        with pytest.raises(KeyError, match="nope"):
            fn(ds, dynamics_column="nope")
    with pytest.raises(ValueError, match="NaN"):
        hp.score.dual(plain([[0.1, np.nan, 0.3]]), window=2)
    with pytest.raises(ValueError, match="ragged"):
        hp.score.dual(Dataset.from_dict({"dynamics": [[0.1, 0.2], [0.1, 0.2, 0.3]]}), window=2)
    with pytest.raises(ValueError, match="expected true-class probabilities"):
        hp.score.dual(plain([[0.1, 2.5, 0.3]]), window=2)
    with pytest.raises(ValueError, match="empty"):
        hp.score.dual(Dataset.from_dict({"dynamics": []}), window=2)
    with pytest.raises(TypeError):
        hp.score.dual(ds, "dynamics")  # keyword-only


def test_output_column_and_overwrite(recorded):
    ds, _, _ = recorded
    out = hp.score.el2n(ds, output_column="difficulty")
    assert "difficulty" in out.column_names and "difficulty" not in ds.column_names
    with pytest.raises(ValueError, match="difficulty.*overwrite"):
        hp.score.entropy(out, output_column="difficulty")
    replaced = hp.score.entropy(out, output_column="difficulty", overwrite=True)
    np.testing.assert_allclose(replaced["difficulty"], hp.score.entropy(ds)["entropy"])
    assert replaced.column_names.count("difficulty") == 1


# The eight public functions, each with the arguments that exercise its parameters.
SCORER_CALLS = {
    "dual": {"window": 4, "epochs": slice(0, 10)},
    "dyn_unc": {"window": 3},
    "el2n": {"epochs": [1, 5, 7]},
    "forgetting": {},
    "aum": {"epochs": -1},
    "entropy": {},
    "margin": {"epochs": slice(2, None)},
    "tdds": {"window": 4, "decay": 0.5, "epochs": slice(1, 12)},
}


def test_the_eight_scores_are_one_table(recorded):
    ds, _, _ = recorded
    assert set(dyn.SCORES) == set(SCORER_CALLS)
    for name, kwargs in SCORER_CALLS.items():
        out = getattr(hp.score, name)(ds, dynamics_column="dynamics", **kwargs)
        values = dyn.score_arrays(name, ds, dynamics_column="dynamics", **kwargs)["score"]
        # The column is the table entry's float64 values rounded to float32, nothing else.
        np.testing.assert_array_equal(np.asarray(out[name], dtype=np.float32), values.astype(np.float32), err_msg=name)
        assert values.dtype == np.float64 and values.shape == (len(ds),)
    # Each entry reads only its fields: a record without them fails naming the missing field.
    for name, spec in dyn.SCORES.items():
        for field in spec.fields:
            if field == "true_prob":
                continue
            with pytest.raises(KeyError, match=field):
                dyn.score_arrays(name, plain([[0.1, 0.2, 0.3, 0.4]]), **{k: v for k, v in SCORER_CALLS[name].items()
                                                                        if k in ("window", "decay")})


def test_every_dynamics_score_records_a_provenance_step(recorded):
    ds, _, _ = recorded
    before = ds.info.description
    for name, kwargs in SCORER_CALLS.items():
        out = getattr(hp.score, name)(ds, dynamics_column="dynamics", output_column=f"my_{name}", **kwargs)
        steps = hp.provenance(out)
        assert [s["method"] for s in steps] == [f"score.{name}"], name
        step = steps[-1]
        assert step["params"]["dynamics_column"] == "dynamics" and step["params"]["output_column"] == f"my_{name}"
        for key, value in kwargs.items():
            expected = value if not isinstance(value, slice) else repr(value)
            assert step["params"][key] == expected, (name, key)
        assert step["input_fingerprint"] == ds._fingerprint and step["output_fingerprint"] == out._fingerprint
        assert step["input_rows"] == step["output_rows"] == len(ds) and step["stale"] is False
    assert ds.info.description == before  # the input's info is untouched


def test_score_then_select_lists_both_steps_none_stale(recorded):
    ds, _, _ = recorded
    scored = hp.score.el2n(hp.score.dual(ds, window=4), epochs=-1)
    sub = hp.select.top_k(scored, fraction=0.25, score_column="el2n")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a current chain must not warn
        steps = hp.provenance(sub)
    assert [s["method"] for s in steps] == ["score.dual", "score.el2n", "top_k"]
    assert [s["stale"] for s in steps] == [False, False, False]
    assert steps[0]["params"]["window"] == 4 and steps[1]["params"]["epochs"] == -1


def test_dual_writes_the_prediction_mean_too(recorded):
    ds, _, _ = recorded
    true_prob = np.array([row["true_prob"] for row in ds["dynamics"]], dtype=np.float32)  # as recorded
    out = hp.score.dual(ds, window=3, epochs=slice(0, 8), mean_output_column="dual_mean")
    expected = true_prob[:, :8].astype(np.float64).mean(axis=1).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(out["dual_mean"], dtype=np.float32), expected)
    assert out.features["dual_mean"] == Value("float32")
    # The DUAL column is the same as without the second output.
    assert out["dual"] == hp.score.dual(ds, window=3, epochs=slice(0, 8))["dual"]
    assert hp.provenance(out)[-1]["params"]["mean_output_column"] == "dual_mean"
    np.testing.assert_array_equal(dyn.prediction_mean(ds, epochs=slice(0, 8)).astype(np.float32), expected)
    assert "dual_mean" not in hp.score.dual(ds, window=3).column_names
    with pytest.raises(ValueError, match="distinct"):
        hp.score.dual(ds, window=3, mean_output_column="dual")
    with pytest.raises(ValueError, match="'dual_mean'.*overwrite"):
        hp.score.dual(out, window=3, output_column="other", mean_output_column="dual_mean")
