"""The chunked column reader: same values as an in-memory read, without copying the column."""

import tracemalloc

import numpy as np
import pytest
from datasets import Dataset, Features, Sequence, Value
from datasets.arrow_writer import ArrowWriter

from hf_prune.ops.columns import iter_matrix, read_matrix
from hf_prune.ops.matrix import ColumnMatrix, open_matrix


def _on_disk(tmp_path, values, *, dtype="float32", rows_per_chunk=100, name="pool"):
    """A memory-mapped Dataset whose ``emb`` column is written in record batches of ``rows_per_chunk`` rows."""
    features = Features({"emb": Sequence(Value(dtype), length=values.shape[1]), "i": Value("int64")})
    path = str(tmp_path / f"{name}.arrow")
    with ArrowWriter(path=path, features=features, writer_batch_size=rows_per_chunk) as writer:
        for start in range(0, len(values), rows_per_chunk):
            part = values[start : start + rows_per_chunk]
            writer.write_batch({"emb": part.tolist(), "i": list(range(start, start + len(part)))})
        writer.finalize()
    return Dataset.from_file(path)


@pytest.fixture
def values():
    return np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)


def test_blocks_cover_every_row_once_zero_copy(tmp_path, values):
    ds = _on_disk(tmp_path, values, rows_per_chunk=300)
    m = open_matrix(ds, "emb")
    assert m.shape == (1000, 8) and len(m._chunks) > 1 and m.nbytes == values.nbytes
    seen = []
    for start, block in m.blocks(batch_rows=256):
        assert block.dtype == np.float32 and block.flags.c_contiguous and len(block) <= 256
        np.testing.assert_array_equal(block, values[start : start + len(block)])
        seen.append((start, len(block)))
        if len(block) >= 256:
            assert not block.flags.writeable  # a view of the mapped file, not a copy
    assert sum(n for _, n in seen) == 1000 and [s for s, _ in seen] == sorted(s for s, _ in seen)
    np.testing.assert_array_equal(m.to_numpy(), values)
    np.testing.assert_array_equal(np.asarray(m), values)


def test_small_chunks_are_merged_into_bounded_blocks(tmp_path, values):
    ds = _on_disk(tmp_path, values, rows_per_chunk=10)
    m = open_matrix(ds, "emb")
    assert len(m._chunks) == 100
    blocks = list(m.blocks(batch_rows=256))
    assert all(len(b) <= 256 for _, b in blocks) and len(blocks) <= 5
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), values)


def test_take_and_subset_follow_view_positions(tmp_path, values):
    m = open_matrix(_on_disk(tmp_path, values, rows_per_chunk=70), "emb")
    idx = np.array([999, 0, 5, 5, 700, -1])
    np.testing.assert_array_equal(m.take(idx), values[idx])
    assert m.subset(np.arange(1000)) is m and not m.gathered
    part = m.subset([10, 3, 998])
    assert isinstance(part, ColumnMatrix) and part.shape == (3, 8) and part.gathered
    np.testing.assert_array_equal(part.to_numpy(), values[[10, 3, 998]])
    np.testing.assert_array_equal(part.subset([2, 0]).take([1]), values[[10]])
    with pytest.raises(IndexError, match="emb"):
        m.take([1000])
    with pytest.raises(IndexError, match="emb"):
        m.subset([-1])


def test_views_after_shuffle_select_filter(tmp_path, values):
    ds = _on_disk(tmp_path, values, rows_per_chunk=128)
    for view in (ds.shuffle(seed=0), ds.select([5, 1, 900]), ds.filter(lambda r: r["i"] % 3 == 0)):
        expected = values[np.asarray(view["i"])]
        m = open_matrix(view, "emb")
        assert m.shape == expected.shape
        np.testing.assert_array_equal(np.concatenate([b for _, b in m.blocks(batch_rows=50)]), expected)
        np.testing.assert_array_equal(read_matrix(view, "emb"), expected)


def test_float16_storage_reads_as_float32_blocks(tmp_path, values):
    ds = _on_disk(tmp_path, values, dtype="float16", rows_per_chunk=300)
    m = open_matrix(ds, "emb")
    assert m.dtype == np.float16 and m.nbytes == values.nbytes // 2
    blocks = [b for _, b in m.blocks()]
    assert all(b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), values.astype(np.float16).astype(np.float32))
    assert read_matrix(ds, "emb").dtype == np.float32


def test_float64_storage_keeps_its_precision_when_asked():
    x = np.array([[1 + 1e-12, 2.0], [3.0, 4.0]])
    ds = Dataset.from_dict({"emb": x.tolist()}, features=Features({"emb": Sequence(Value("float64"))}))
    assert read_matrix(ds, "emb", dtype=np.float64)[0, 0] == 1 + 1e-12
    assert read_matrix(ds, "emb").dtype == np.float32


def test_single_in_memory_chunk_is_not_copied(values):
    ds = Dataset.from_dict({"emb": values.tolist()}, features=Features({"emb": Sequence(Value("float32"), length=8)}))
    assert read_matrix(ds, "emb") is open_matrix(ds, "emb").to_numpy() or np.shares_memory(
        read_matrix(ds, "emb"), open_matrix(ds, "emb").to_numpy()
    )


def test_opening_and_a_pass_allocate_no_copy_of_the_column(tmp_path):
    big = np.random.default_rng(1).normal(size=(20_000, 64)).astype(np.float32)  # 5 MiB
    ds = _on_disk(tmp_path, big, rows_per_chunk=1000)
    tracemalloc.start()
    try:
        m = open_matrix(ds, "emb")
        total = np.zeros(64)
        for _, block in m.blocks():
            total += block.sum(0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(total, big.sum(0, dtype=np.float64), rtol=1e-4)
    assert peak < big.nbytes / 4, f"{peak} bytes allocated for a {big.nbytes}-byte column"


def test_nan_rows_are_counted_and_located_across_chunks(tmp_path, values):
    bad = values.copy()
    bad[[7, 450, 451], 2] = np.nan
    bad[600, 0] = np.inf
    ds = _on_disk(tmp_path, bad, rows_per_chunk=100)
    with pytest.raises(ValueError, match=r"'emb' has NaN/inf values in 4 rows \(first: row 7\)"):
        open_matrix(ds, "emb")
    assert open_matrix(ds, "emb", allow_nonfinite=True).shape == (1000, 8)
    with pytest.raises(ValueError, match=r"'emb' has NaN/inf values \(first: row 50\)"):
        for _ in iter_matrix(ds.select(range(400, 1000)), "emb", batch_size=10):
            pass


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ({"emb": [[1.0, 2.0], [1.0]]}, "ragged"),
        ({"emb": [[1.0, 2.0], None]}, "null rows"),
        ({"emb": [["a", "b"], ["c", "d"]]}, "holds string"),
        ({"emb": [1.0, 2.0]}, "expected a list of numbers"),
        ({"emb": [[], []]}, "empty rows"),
    ],
)
def test_bad_columns_are_named(column, message):
    with pytest.raises(ValueError, match=message) as err:
        open_matrix(Dataset.from_dict(column), "emb")
    assert "'emb'" in str(err.value)


def test_ragged_across_chunks_and_missing_column(tmp_path):
    a = Dataset.from_dict({"emb": [[1.0, 2.0]] * 3})
    b = Dataset.from_dict({"emb": [[1.0, 2.0, 3.0]] * 2})
    from datasets import concatenate_datasets

    with pytest.raises(ValueError, match=r"'emb' is ragged: row lengths range from 2 to 3"):
        open_matrix(concatenate_datasets([a, b]), "emb")
    with pytest.raises(KeyError, match="nope"):
        open_matrix(a, "nope")
    with pytest.raises(ValueError, match="batch_rows"):
        next(open_matrix(a, "emb").blocks(batch_rows=0))
