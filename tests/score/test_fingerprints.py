"""Every scorer hashes deterministically: identical runs give the same result fingerprint."""

import numpy as np
import pytest
from datasets import load_from_disk

import hf_prune as hp
from hf_prune.dynamics import DYNAMICS_FIELDS, dynamics_features, dynamics_struct
from hf_prune.ops.columns import add_column
from tests.conftest import make_dataset

RNG = np.random.default_rng(0)
N = 24
VALIDATION = RNG.normal(size=(3, 8)).astype(np.float32)

# One call per scorer in hf_prune.score, on the columns of `saved` below.
CALLS = {
    "aum": dict(),
    "clip_score": dict(),
    "dual": dict(window=3),
    "dyn_unc": dict(window=3),
    "el2n": dict(),
    "entropy": dict(),
    "feature_norm": dict(p=1),
    "forgetting": dict(),
    "grand": dict(gradient_column="grad"),
    "less": dict(validation_gradients=VALIDATION),
    "margin": dict(),
    "rds": dict(targets=make_dataset(VALIDATION), task_column=None),
    "ssp": dict(n_clusters=3, label_column="label"),
    "tdds": dict(window=3),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A dataset saved to disk and loaded back, with every column some scorer reads."""
    ds = make_dataset(RNG.normal(size=(N, 8)), label=RNG.integers(0, 2, N))
    for name in ("image_emb", "text_emb", "grad"):
        ds = add_column(ds, name, RNG.normal(size=(N, 8)).astype(np.float32))
    records = dynamics_struct({field: RNG.random((N, 6)).astype(np.float32) for field in DYNAMICS_FIELDS})
    ds = ds.add_column("dynamics", records, feature=dynamics_features(6))
    path = tmp_path_factory.mktemp("scores") / "ds"
    ds.save_to_disk(str(path))
    return str(path)


def test_every_scorer_is_covered():
    assert set(CALLS) == set(hp.score.__all__)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_identical_runs_give_the_same_fingerprint(name, saved, random_hash_records):
    scorer = getattr(hp.score, name)
    ds = load_from_disk(saved)
    first, second = scorer(ds, **CALLS[name]), scorer(load_from_disk(saved), **CALLS[name])
    (column,) = set(first.column_names) - set(ds.column_names)
    np.testing.assert_array_equal(np.asarray(second[column]), np.asarray(first[column]))
    assert second._fingerprint == first._fingerprint != ds._fingerprint
    assert random_hash_records == []
