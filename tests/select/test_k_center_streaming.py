"""k-center over a column read block by block: the same picks as the in-RAM array and as the previous
implementation (an explicitly centred copy of the rows), whatever the column's chunks, storage type or
view, and no copy of a memory-mapped column."""

import os
import subprocess
import sys

import numpy as np
import pytest
from datasets import Features, Sequence, Value, concatenate_datasets, load_from_disk

import hf_prune as hp
from hf_prune.select import _stream
from tests.conftest import make_dataset


def blob_rows(n=240, d=6, classes=3, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(classes, size=n)
    x = (rng.normal(scale=4.0, size=(classes, d))[labels] + rng.normal(size=(n, d)) + offset).astype(np.float32)
    return x, labels


def views(x, labels, tmp_path):
    """``{name: (dataset, the float32 rows it holds, in its order)}`` over the same rows."""
    # Chunks of 300 rows are served as zero-copy views, chunks of 50 merged into bounded copies.
    cut = [0, 50, 100, 400 if len(x) > 400 else len(x) // 2, len(x)]
    whole = make_dataset(x, label=labels)
    parts = [make_dataset(x[a:b], label=labels[a:b]) for a, b in zip(cut, cut[1:]) if b > a]
    chunked = concatenate_datasets(parts)
    chunked.save_to_disk(str(tmp_path / "chunked"))
    disk = load_from_disk(str(tmp_path / "chunked"))
    features = Features({"label": whole.features["label"], "emb": Sequence(Value("float16"), length=x.shape[1])})
    half = chunked.cast(features)
    perm = np.random.default_rng(1).permutation(len(x))
    return {
        "memory": (whole, x),
        "chunks": (chunked, x),
        "disk": (disk, x),
        "float16 chunks": (half, x.astype(np.float16).astype(np.float32)),
        "shuffled": (disk.select(perm), x[perm]),
    }


def previous_k_center(x, k, first):
    """The previous implementation: rows centred in a copy, distances from ‖x‖² − 2⟨x, c⟩ + ‖c‖² (float64 here)."""
    x = x.astype(np.float64)
    x = x - x.mean(0)
    sq = (x * x).sum(1)
    nearest = np.full(len(x), np.inf)
    chosen = [first]
    for _ in range(k - 1):
        c = chosen[-1]
        nearest = np.minimum(nearest, np.maximum(sq - 2 * x @ x[c] + sq[c], 0.0))
        nearest[chosen] = -1.0
        chosen.append(int(np.argmax(nearest)))
    return chosen


@pytest.fixture(params=[None, 64], ids=["one block", "blocks of 64 rows"])
def block_rows(request, monkeypatch):
    if request.param:
        monkeypatch.setattr(_stream, "DEFAULT_BLOCK_ROWS", request.param)
    return request.param


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_streamed_views_pick_what_the_array_and_the_previous_implementation_pick(tmp_path, block_rows, metric):
    x, labels = blob_rows(n=500, offset=3.0)
    for name, (ds, values) in views(x, labels, tmp_path).items():
        reference = make_dataset(values, label=np.asarray(ds["label"]))
        for label_column in (None, "label"):
            kwargs = dict(size=40, metric=metric, init="first", label_column=label_column, device="cpu",
                          rank_column="rank")
            got = hp.select.k_center_greedy(ds, **kwargs)
            want = hp.select.k_center_greedy(reference, **kwargs)
            assert got["row_id"] == want["row_id"] and got["rank"] == want["rank"], (name, label_column)
        rows = values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12) if metric == "cosine" else values
        got = hp.select.k_center_greedy(ds, size=40, metric=metric, init="first", device="cpu", rank_column="rank")
        order = np.array(got["row_id"])[np.argsort(got["rank"])]
        assert order.tolist() == previous_k_center(rows, 40, 0), name


def test_a_memory_mapped_column_is_not_copied(tmp_path):
    assert_no_copy("k_center_greedy", tmp_path)


def assert_no_copy(method, tmp_path, **kwargs):
    """Peak memory of ``method`` beside a 48 MB memory-mapped column stays far below a second copy of it."""
    script = (
        "import resource, sys, numpy as np, torch\n"
        "from datasets import load_from_disk\n"
        "import hf_prune as hp\n"
        "from hf_prune.ops.columns import add_column\n"
        "from datasets import Dataset\n"
        "torch.set_num_threads(1)\n"
        "x = np.random.default_rng(0).standard_normal((60_000, 200), dtype=np.float32)\n"
        "add_column(Dataset.from_dict({'i': np.arange(len(x))}), 'emb', x).save_to_disk(sys.argv[1])\n"
        "del x\n"
        "ds = load_from_disk(sys.argv[1])\n"
        f"select = getattr(hp.select, {method!r})\n"
        f"select(ds.select(range(50)), size=3, device='cpu', **{kwargs!r})\n"
        "m = hp.ops.matrix.open_matrix(ds, 'emb')  # pages the column in, so the peak counts only new memory\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"sub = select(ds, size=4, device='cpu', **{kwargs!r})\n"
        "grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024\n"
        "print(grown / m.nbytes, len(set(sub['row_id'])))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "pool")], capture_output=True, text=True,
                         env=env, check=True)
    ratio, distinct = out.stdout.split()[-2:]
    assert distinct == "4"
    assert float(ratio) < 0.25, out.stdout
