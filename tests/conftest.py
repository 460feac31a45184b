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


@pytest.fixture
def random_hash_records(monkeypatch):
    """Messages in which `datasets` says it hashed a transform randomly (so it can never be cached).

    `datasets` logs this once per process as a warning and afterwards at INFO on the
    ``datasets.fingerprint`` logger: the once-flag is reset and INFO records are collected.
    """
    import logging

    from datasets import fingerprint

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            if "random hash" in record.getMessage():
                records.append(record.getMessage())

    logger = logging.getLogger(fingerprint.__name__)
    handler, level = Collect(logging.INFO), logger.level
    monkeypatch.setattr(fingerprint, "fingerprint_warnings", {})
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for the whole test session; the tests that use it skip without Ray."""
    ray = pytest.importorskip("ray", reason="the `ray` extra is not installed")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
