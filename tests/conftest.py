import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from datasets import Dataset, disable_progress_bars  # noqa: E402

from hf_prune.ops.columns import add_column  # noqa: E402

disable_progress_bars()


def make_dataset(embeddings=None, **columns) -> Dataset:
    """A Dataset whose ``emb`` column is a declared fixed-length float32 list (when given)."""
    n = len(embeddings) if embeddings is not None else len(next(iter(columns.values())))
    ds = Dataset.from_dict({k: list(v) if not isinstance(v, np.ndarray) else v.tolist() for k, v in columns.items()}) if columns else Dataset.from_dict({"idx": list(range(n))})
    if embeddings is not None:
        ds = add_column(ds, "emb", np.asarray(embeddings, dtype=np.float32))
    return ds


@pytest.fixture
def blobs():
    """Three labelled Gaussian blobs in 8-d: (Dataset with emb/label/score, embeddings, labels)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=5.0, size=(3, 8))
    labels = np.repeat(np.arange(3), [40, 30, 20])
    emb = centers[labels] + rng.normal(size=(90, 8))
    score = rng.random(90)
    ds = make_dataset(emb, label=labels, score=score.astype(np.float32))
    return ds, emb.astype(np.float32), labels
