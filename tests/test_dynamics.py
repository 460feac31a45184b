import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, Features, Sequence, Value

import hf_prune as hp
from hf_prune.dynamics import (
    DYNAMICS_FIELDS,
    DynamicsRecorder,
    attach_dynamics,
    dynamics_features,
    read_dynamics,
)
from hf_prune.score.dynamics import dual_from_probs


@pytest.fixture(scope="module")
def recorded():
    """Dynamics of 30 rows over 4 epochs, as `DynamicsRecorder.to_dataset` (and the recipe) write them."""
    g = torch.Generator().manual_seed(0)
    n, c, epochs = 30, 4, 4
    labels = torch.randint(0, c, (n,), generator=g)
    rec = DynamicsRecorder(num_rows=n, num_classes=c)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        rec.update(order, torch.randn(n, c, generator=g) * 3, labels[order])
        rec.end_epoch()
    return rec.to_dataset(), rec.arrays()


@pytest.fixture
def train():
    return Dataset.from_dict({"x": np.arange(30).tolist(), "label": (np.arange(30) % 3).tolist()})


def fields(ds, column="dynamics"):
    return read_dynamics(ds, column, DYNAMICS_FIELDS)


def test_joins_a_shuffled_selected_view_by_row_id_and_keeps_float32(recorded, train):
    dyn, arrays = recorded
    sub = hp.select.random(train, size=12, seed=3).shuffle(seed=7)
    out = attach_dynamics(sub, dyn)
    assert out.features["dynamics"] == dynamics_features(4) == dyn.features["dynamics"]
    assert out.data.schema.field("dynamics").type.field("true_prob").type.value_type == "float"  # float32 in Arrow
    ids = np.asarray(sub["row_id"])
    assert not np.array_equal(ids, np.sort(ids))  # really a reordered view
    got = fields(out)
    for name in DYNAMICS_FIELDS:
        np.testing.assert_array_equal(got[name], arrays[name][ids])
    assert out["x"] == sub["x"] and out.column_names == ["x", "label", "row_id", "dynamics"]
    # On the selection itself, its provenance travels on and still describes the rows.
    steps = hp.provenance(attach_dynamics(hp.select.random(train, size=12, seed=3), dyn))
    assert [step["method"] for step in steps] == ["random"] and not steps[-1].get("stale", False)


def test_a_filtered_view_and_recorded_rows_in_any_order(recorded, train):
    dyn, arrays = recorded
    scrambled = dyn.shuffle(seed=1)  # the recorder writes row_id in order; any order joins the same
    with_ids = train.add_column("row_id", list(range(30)))
    odd = with_ids.filter(lambda row: row["x"] % 2 == 1)
    out = attach_dynamics(odd, scrambled)
    np.testing.assert_array_equal(fields(out)["el2n"], arrays["el2n"][1::2])


def test_without_row_id_positions_are_the_ids(recorded, train):
    dyn, arrays = recorded
    out = attach_dynamics(train, dyn.shuffle(seed=2))
    np.testing.assert_array_equal(fields(out)["true_prob"], arrays["true_prob"])
    # A prefix selection (the recipe's --max_train_samples) keeps positions; covering it needs the same rows.
    with pytest.raises(ValueError, match="10 positions are the row ids, but the dynamics hold 20 other ids"):
        attach_dynamics(train.select(range(10)), dyn)
    np.testing.assert_array_equal(
        fields(attach_dynamics(train.select(range(10)), dyn.select(range(10))))["correct"], arrays["correct"][:10]
    )
    # A reordered view without row_id cannot be joined by position unless asked for explicitly.
    shuffled = train.shuffle(seed=0)
    with pytest.raises(ValueError, match="reordered or filtered view.*row_id_column=None"):
        attach_dynamics(shuffled, dyn)
    forced = attach_dynamics(shuffled, dyn, row_id_column=None)
    np.testing.assert_array_equal(fields(forced)["true_prob"], arrays["true_prob"])


def test_missing_and_duplicate_ids(recorded, train):
    dyn, _ = recorded
    with_ids = train.add_column("row_id", list(range(30)))
    with pytest.raises(ValueError, match=r"10 of 30 rows have no recorded dynamics \(by 'row_id'; first ids: \[20, 21"):
        attach_dynamics(with_ids, dyn.select(range(20)))
    with pytest.raises(ValueError, match="10 of 30 rows have no recorded dynamics .by position"):
        attach_dynamics(train, dyn.select(range(20)))
    twice = Dataset.from_dict({"row_id": [0, 1, 1, 2], "dynamics": [[0.1, 0.2]] * 4})
    with pytest.raises(ValueError, match="'row_id' of the dynamics has duplicate values .1 ids, first: 1"):
        attach_dynamics(with_ids, twice)
    repeated = with_ids.select([0, 5, 5])
    with pytest.raises(ValueError, match="'row_id' of the dataset has duplicate values"):
        attach_dynamics(repeated, dyn)


def test_bad_columns_and_types(recorded, train, tmp_path):
    dyn, _ = recorded
    with pytest.raises(KeyError, match="the dynamics have no column 'dyn'"):
        attach_dynamics(train, dyn, dynamics_column="dyn")
    with pytest.raises(KeyError, match="no column 'row_id'"):
        attach_dynamics(train, dyn.remove_columns("row_id"))
    with pytest.raises(KeyError, match="'sample_id' not found"):
        attach_dynamics(train, dyn, row_id_column="sample_id")
    floats = train.add_column("row_id", [float(i) for i in range(30)])
    with pytest.raises(ValueError, match="'row_id' of the dataset has type double; expected integer"):
        attach_dynamics(floats, dyn)
    with pytest.raises(ValueError, match="is the row id column"):
        attach_dynamics(train.add_column("row_id", list(range(30))), dyn, output_column="row_id")
    DatasetDict({"train": dyn}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(ValueError, match="holds a DatasetDict"):
        attach_dynamics(train, tmp_path / "dict")
    with pytest.raises(TypeError, match="`dynamics` must be"):
        attach_dynamics(train, {"row_id": [0]})


def test_existing_column_needs_overwrite_and_inputs_are_untouched(recorded, train, tmp_path):
    dyn, arrays = recorded
    dyn.save_to_disk(str(tmp_path / "dyn"))
    first = attach_dynamics(train, str(tmp_path / "dyn"))  # a saved path, as the recipe writes it
    np.testing.assert_array_equal(fields(first)["kl_to_previous"], arrays["kl_to_previous"])
    before = (first.column_names, first._fingerprint, dyn.column_names, dyn._fingerprint)
    with pytest.raises(ValueError, match="'dynamics' already exists; pass overwrite=True"):
        attach_dynamics(first, dyn)
    late = dyn.map(lambda row: {"dynamics": {**row["dynamics"], "true_prob": [1.0] * 4}}, features=dyn.features)
    replaced = attach_dynamics(first, late, overwrite=True)
    np.testing.assert_array_equal(fields(replaced)["true_prob"], np.ones((30, 4), np.float32))
    assert (first.column_names, first._fingerprint, dyn.column_names, dyn._fingerprint) == before
    np.testing.assert_array_equal(fields(first)["true_prob"], arrays["true_prob"])
    # Same inputs → same fingerprint (datasets caching); another output name → another one.
    assert attach_dynamics(train, dyn)._fingerprint == attach_dynamics(train, dyn)._fingerprint
    assert attach_dynamics(train, dyn, output_column="dyn")._fingerprint != attach_dynamics(train, dyn)._fingerprint


def test_a_plain_true_prob_column_keeps_its_type_and_scores(train):
    probs = np.random.default_rng(0).random((30, 5)).astype(np.float32)
    features = Features({"row_id": Value("int64"), "p": Sequence(Value("float32"), length=5)})
    dyn = Dataset.from_dict({"row_id": list(range(30))[::-1], "p": probs[::-1].tolist()}, features=features)
    out = attach_dynamics(train, dyn, dynamics_column="p", output_column="probs")
    assert out.features["probs"] == Sequence(Value("float32"), length=5)
    scored = hp.score.dual(out, dynamics_column="probs", window=3)
    np.testing.assert_allclose(scored["dual"], dual_from_probs(probs, 3), rtol=1e-6)
