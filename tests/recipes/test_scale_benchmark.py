import argparse
import inspect
import math

import numpy as np
import pytest
import torch
from datasets import load_from_disk

import hf_prune as hp
from recipes.benchmarks.scale import (
    data_path,
    ensure_data,
    find_recall,
    greedy_kept,
    knn_choices,
    main,
    measure,
    plan,
    report,
    run_child,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("scale_data")
    return workdir, ensure_data(workdir, 2000, 16, "float32", 0, log=lambda msg: None)


def _real(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_data_is_written_once_seeded_and_memory_mapped(data, tmp_path):
    workdir, path = data
    assert path == data_path(workdir, 2000, 16, "float32", 0)
    ds = load_from_disk(str(path))
    assert len(ds) == 2000 and ds.features["emb"].length == 16
    assert ds.cache_files  # on disk, memory-mapped
    assert sorted(set(ds["label"])) == list(range(100))
    mtime = (path / "state.json").stat().st_mtime
    assert ensure_data(workdir, 2000, 16, "float32", 0, log=lambda msg: None) == path  # cached
    assert (path / "state.json").stat().st_mtime == mtime
    half = ensure_data(tmp_path, 2000, 16, "float16", 0, log=lambda msg: None)
    again = load_from_disk(str(half))
    assert again.features["emb"].feature.dtype == "float16"
    # Same seed, same rows (up to the float16 rounding).
    np.testing.assert_allclose(np.asarray(again["emb"][:5]), np.asarray(ds["emb"][:5]), rtol=2e-3, atol=2e-3)


def test_measure_reports_real_time_and_memory_for_a_floor_and_a_selector(data):
    _, path = data
    floor = measure({"kind": "floor", "name": "knn_ivf", "path": str(path)})
    run = measure({"kind": "selector", "name": "herding", "path": str(path), "kept": 50})
    for result in (floor, run):
        assert _real(result["wall_s"]) and result["wall_s"] > 0
        assert _real(result["peak_heap_bytes"]) and _real(result["peak_file_bytes"]) and result["vm_hwm_bytes"] > 0
        for key in ("RssAnon", "RssFile", "VmHWM"):
            assert result["peak"][key] >= result["rss_before"][key] > 0
    assert 0.5 < floor["recall_at_10"] <= 1.0
    assert run["kept_rows"] == 50 and run["kwargs"]["embedding_column"] == "emb"


def test_knn_choices_are_read_from_the_selector():
    choices = knn_choices("d2_pruning")
    assert choices[0] == inspect.signature(hp.select.d2_pruning).parameters["knn_index"].default
    assert "ivf" in choices and "flat" in choices and "exact" not in choices  # one name for exact search
    assert knn_choices("herding") == []


def test_greedy_kept_and_plan_say_when_a_budget_is_capped():
    assert greedy_kept(100_000, 1_000, 100_000_000) == 1_000
    assert greedy_kept(1_000_000, 10_000, 100_000_000) == 100
    args = argparse.Namespace(sizes=[1_000_000], selectors=["herding", "d2_pruning"], fractions=[0.01],
                              greedy_row_picks=100_000_000)
    runs = plan(args, {"d2_pruning": ["flat", "ivf"]})
    assert [(r["variant"], r["kept"], r["budget"]) for r in runs] == [
        ("herding", 100, 10_000), ("d2_pruning[flat]", 10_000, 10_000), ("d2_pruning[ivf]", 10_000, 10_000)]


def test_find_recall_walks_the_provenance_step():
    assert find_recall({"params": {"k": 5}, "stage_times": {"knn": {"recall_at_5": 0.9}}}) == 0.9
    assert find_recall({"params": {"k": 5}}) is None
    assert find_recall({"knn": {"recall_at_k_min": None, "recall_measured": True, "recall_s": 0.0}}) is None


def test_a_failing_or_slow_run_is_recorded_not_dropped(data):
    _, path = data
    failed = run_child({"kind": "selector", "name": "no_such_selector", "path": str(path), "kept": 5}, timeout=120)
    assert failed["status"].startswith("error:") and "no_such_selector" in failed["status"]
    slow = run_child({"kind": "floor", "name": "kmeans", "path": str(path)}, timeout=0.2)
    assert slow["status"] == "did not finish in 0.2 s"


def test_report_from_measured_runs(data):
    _, path = data
    runs = {"floor/pass/N=2000": {**measure({"kind": "floor", "name": "pass", "path": str(path)}), "status": "ok"},
            "herding/N=2000/f=0.025": {**measure({"kind": "selector", "name": "herding", "path": str(path), "kept": 50}),
                                       "status": "ok"}}
    settings = {"dim": 16, "dtype": "float32", "seed": 0, "device": "cpu", "per_class": False, "threads": None,
                "greedy_row_picks": 10**8}
    text = report({"runs": runs, "settings": settings, "knn_choices": {}})
    row = next(line for line in text.splitlines() if line.startswith("| herding |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "50 (2%)" and cells[-1] == "ok"
    assert float(cells[2]) > 0 and float(cells[3]) >= 0 and float(cells[4]) >= 0
    assert cells[5].endswith("passes/pick") and float(cells[5].split()[0]) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_gpu_plan_fails_clearly_without_a_gpu(tmp_path):
    with pytest.raises(SystemExit, match="--gpu: no CUDA device"):
        main(["--gpu", "--output-dir", str(tmp_path / "out"), "--workdir", str(tmp_path / "data")])
    assert not (tmp_path / "data").exists()  # nothing written before the check


@pytest.mark.slow
def test_smoke_end_to_end_in_fresh_processes(data, tmp_path):
    workdir, _ = data
    out = tmp_path / "out"
    argv = ["--sizes", "2000", "--dim", "16", "--selectors", "norm_sampling,herding", "--fractions", "0.1",
            "--workdir", str(workdir), "--output-dir", str(out), "--run-timeout", "120"]
    results = main(argv)
    assert set(results["runs"]) == {"floor/pass/N=2000", "floor/knn_flat/N=2000", "floor/knn_ivf/N=2000",
                                    "floor/kmeans/N=2000", "norm_sampling/N=2000/f=0.1", "herding/N=2000/f=0.1"}
    for key, entry in results["runs"].items():
        assert entry["status"] == "ok", (key, entry)
        assert _real(entry["wall_s"]) and _real(entry["peak_heap_bytes"]) and entry["peak"]["VmHWM"] > 0
    assert "| herding | 200 (10%) |" in results["report"] and (out / "report.md").read_text().strip()
    # Resume: nothing is redone.
    again = main(argv)
    assert again["runs"]["herding/N=2000/f=0.1"]["wall_s"] == results["runs"]["herding/N=2000/f=0.1"]["wall_s"]


def test_floors_and_knn_index_variants_can_be_chosen(data, tmp_path):
    workdir, _ = data
    argv = ["--sizes", "2000", "--dim", "16", "--selectors", "d2_pruning", "--knn-index", "ivf", "--floors", "pass",
            "--fractions", "0.1", "--workdir", str(workdir), "--output-dir", str(tmp_path), "--run-timeout", "120"]
    results = main(argv)
    assert set(results["runs"]) == {"floor/pass/N=2000", "d2_pruning_ivf_/N=2000/f=0.1"}
    assert all(entry["status"] == "ok" for entry in results["runs"].values())
    with pytest.raises(SystemExit, match="--floors: unknown"):
        main([*argv[:-2], "--floors", "pass,bogus"])


def test_split_reference_maps_each_part_in_its_own_process(data, tmp_path):
    from recipes.benchmarks.scale import ProjectionEmbedder, _split_processes

    _, path = data
    ds = load_from_disk(str(path))
    warm, timed = _split_processes(str(path), 2, str(tmp_path), len(ds), batch_size=300)  # 7 batches: 3 and 4
    assert warm() is None  # both processes warmed up and waiting
    out = timed()
    assert len(out.cache_files) == 2 and len(out) == len(ds)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the parts ran on one thread each: the same kernels, so the same bits
    try:
        whole = ProjectionEmbedder(dim=16).map(ds.with_format("numpy"), batch_size=300)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.asarray(out["proj"], np.float32), np.asarray(whole["proj"], np.float32))


def test_ray_report_checks_the_targets_against_the_runs():
    from recipes.benchmarks.scale import ray_report

    def run(wall, digest="h", **extra):
        return {"status": "ok", "wall_s": wall, "result_hash": digest, "peak_heap_bytes": 2**20,
                "loadavg_start": [1.0], "loadavg_end": [1.0], **extra}

    results = {"settings": {"n": 1000, "dim": 16, "dtype": "float32"}, "environment": {}, "runs": {
        "ray/map/plain/workers=1": run(20.0),
        "ray/map/split/workers=2": run(12.5),
        "ray/map/ray/workers=1": run(21.0, executor={"actors_start_s": 0.1, "shards_s": 20.5, "join_s": 0.2}),
        "ray/map/ray/workers=2": run(14.0, digest="other"),
    }}
    text = ray_report(results)
    assert "Ray 1 worker / plain = 1.050 (target <= 1.10: met)" in text
    assert "Ray 2 workers speed-up over 1 = 1.50× (target >= 1.7: missed)" in text
    assert "against one: 1.60×" in text
    assert "| NO |" in text  # a run whose result differs from the plain one is flagged
    assert "shards 20.5" in text
