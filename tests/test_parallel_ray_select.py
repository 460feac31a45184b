"""Selection on a local Ray cluster: per-class tasks, SemDeDup's clusters, a lost worker, a failing class, the CLI.

Every test compares the merged selection (by ``row_id``) with the one-process call with the same
arguments. The cluster is the session's ``ray_cluster`` (2 CPUs); the tests skip without Ray.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from datasets import Dataset, load_from_disk

import hf_prune as hp
from hf_prune.ops.columns import add_column
from hf_prune.parallel.ray_executor import TaskFailed
from hf_prune.provenance import provenance

from .conftest import make_dataset


def ids(sub) -> list[int]:
    return np.asarray(sub["row_id"]).tolist()


def labelled(classes: int, per_class: int, dim: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    centres = rng.normal(scale=3.0, size=(classes, dim))
    emb = (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32)
    return make_dataset(emb, label=labels, score=rng.random(len(labels)).astype(np.float32))


def test_per_class_selections_on_ray_equal_one_process(ray_cluster, blobs):
    ds, _, _ = blobs
    calls = [
        (hp.select.gm_matching, {"fraction": 0.2, "embedding_column": "emb", "rank_column": "rank"}),
        (hp.select.ccs, {"size": 30, "score_column": "score", "hard_cutoff": 0.1, "seed": 4}),
        (hp.select.semdedup, {"fraction": 0.5, "embedding_column": "emb", "n_clusters": 3, "seed": 1}),
    ]
    local = [fn(ds, label_column="label", **kwargs) for fn, kwargs in calls]
    with hp.parallel.ray(workers=2, progress=False):
        remote = [fn(ds, label_column="label", **kwargs) for fn, kwargs in calls]
    for (fn, _), one, many in zip(calls, local, remote):
        assert many.to_dict() == one.to_dict(), fn.__name__  # rows, row_id, rank: all the same
        step = provenance(many, warn=False)[-1]
        assert step["params"] == provenance(one, warn=False)[-1]["params"]
        facts = step["executor"]
        assert (facts["name"], facts["split"], facts["tasks"], facts["workers"]) == ("ray", True, 3, 2), fn.__name__
        assert "executor" not in provenance(one, warn=False)[-1]


def test_semdedup_clusters_run_as_tasks_and_keep_the_same_rows(ray_cluster):
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(600, 16)).astype(np.float32)
    emb[300:400] = emb[:100] + 1e-3 * rng.normal(size=(100, 16)).astype(np.float32)  # near-duplicates
    ds = add_column(Dataset.from_dict({"i": list(range(600))}), "emb", emb)
    kwargs = {"embedding_column": "emb", "n_clusters": 30, "seed": 2}
    one = hp.select.semdedup(ds, size=450, **kwargs)
    one_eps = hp.select.semdedup_filter(ds, eps=0.01, **kwargs)
    with hp.parallel.ray(workers=2, progress=False):
        many = hp.select.semdedup(ds, size=450, **kwargs)
        many_eps = hp.select.semdedup_filter(ds, eps=0.01, **kwargs)
    assert ids(many) == ids(one)
    assert ids(many_eps) == ids(one_eps) and len(one_eps) <= 500  # the copies went
    facts = provenance(many, warn=False)[-1]["executor"]
    assert facts["split"] is True and facts["groups"] == 30 and facts["tasks"] == 8  # 4 batches per worker
    assert "k-means on the driver" in facts["reason"]


def test_one_global_selection_runs_on_the_driver(ray_cluster, blobs):
    ds, _, _ = blobs
    one = hp.select.k_center_greedy(ds, size=12, embedding_column="emb")
    with hp.parallel.ray(progress=False):
        many = hp.select.k_center_greedy(ds, size=12, embedding_column="emb")
    assert ids(many) == ids(one)
    facts = provenance(many, warn=False)[-1]["executor"]
    assert facts["split"] is False and "one global problem" in facts["reason"]


def test_a_dataset_without_row_id_gets_one_and_chains_map_back(ray_cluster, blobs):
    ds, _, _ = blobs
    assert "row_id" not in ds.column_names
    first_local = hp.select.random(ds.shuffle(seed=3), fraction=0.6, label_column="label", seed=1)
    second_local = hp.select.herding(first_local, size=15, embedding_column="emb", label_column="label")
    with hp.parallel.ray(progress=False):
        first = hp.select.random(ds.shuffle(seed=3), fraction=0.6, label_column="label", seed=1)
        second = hp.select.herding(first, size=15, embedding_column="emb", label_column="label")
    assert ids(first) == ids(first_local) and ids(second) == ids(second_local)
    assert "row_id" not in ds.column_names  # the input is not changed


def _kill_first(task_name: str, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first process running the Ray task ``task_name``, then stop."""
    import psutil

    while not stop.is_set():
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if cmdline and cmdline[0].startswith(f"ray::{task_name}"):
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
                return
        time.sleep(0.02)


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_retried_and_changes_nothing(ray_cluster):
    ds = labelled(classes=6, per_class=6000, dim=32)  # herding of one class takes about a second here
    kwargs = {"fraction": 0.25, "embedding_column": "emb", "label_column": "label", "rank_column": "rank",
              "device": "cpu"}
    one = hp.select.herding(ds, **kwargs)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first, args=("pick_group", stop, killed))
    with hp.parallel.ray(workers=2, max_retries=3, progress=False):
        killer.start()
        try:
            many = hp.select.herding(ds, **kwargs)
        finally:
            stop.set()
            killer.join()
    assert killed, "no worker was running pick_group: the kill never happened"
    assert many.to_dict() == one.to_dict()
    kept = ids(many)
    assert len(kept) == len(set(kept)) == len(one)  # no row missing, none twice


def test_a_class_whose_pick_keeps_failing_is_named(ray_cluster, blobs):
    from hf_prune.select._core import run_selection

    ds, _, labels = blobs

    def pick(rows, k, rng):  # class 1 (rows 40–69) always fails; a plain error, not bad input
        if len(rows) == 30:
            raise RuntimeError("the solver diverged")
        return np.arange(k)

    with hp.parallel.ray(max_retries=1, progress=False):
        with pytest.raises(TaskFailed, match=r"class 1 of 'label' \(30 rows, positions 40–69\).*the solver diverged"):
            run_selection(ds, method="broken", params={}, fraction=0.5, size=None, seed=0, label_column="label",
                          pick=pick)


def test_cli_select_on_ray_equals_local(ray_cluster, blobs, tmp_path):
    from hf_prune.cli import main

    ds, _, _ = blobs
    ds.save_to_disk(str(tmp_path / "data"))
    selector = "gm_matching:fraction=0.3,embedding_column=emb,label_column=label"
    assert main(["select", str(tmp_path / "data"), "--selector", selector, "--output", str(tmp_path / "local")]) == 0
    assert main(["select", str(tmp_path / "data"), "--selector", selector, "--output", str(tmp_path / "ray"),
                 "--executor", "ray", "--workers", "2", "--max-retries", "2"]) == 0
    local, remote = load_from_disk(str(tmp_path / "local")), load_from_disk(str(tmp_path / "ray"))
    assert ids(remote) == ids(local)
    facts = provenance(remote, warn=False)[-1]["executor"]
    assert (facts["name"], facts["workers"], facts["max_retries"], facts["tasks"]) == ("ray", 2, 2, 3)


def test_cli_run_wraps_the_pipeline_in_the_executor(ray_cluster, blobs, tmp_path, capsys):
    from hf_prune.cli import main

    ds, _, _ = blobs
    ds.save_to_disk(str(tmp_path / "data"))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "steps:\n"
        f"  - load: {{path: {tmp_path / 'data'}}}\n"
        "  - select: {selector: herding, fraction: 0.2, embedding_column: emb, label_column: label}\n"
        f"  - save: {{path: {tmp_path / 'out'}}}\n"
    )
    assert main(["run", str(pipeline), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
                 "--executor", "ray"]) == 0
    captured = capsys.readouterr()
    assert "executor: Ray at a local cluster, 2 worker(s)" in captured.out + captured.err
    out = load_from_disk(str(tmp_path / "out"))
    assert ids(out) == ids(hp.select.herding(ds, fraction=0.2, embedding_column="emb", label_column="label"))
    herding = next(step for step in provenance(out, warn=False) if step["method"] == "herding")
    assert herding["executor"]["split"] is True and herding["executor"]["tasks"] == 3


def test_no_cluster_at_the_address_fails_fast_before_any_work(tmp_path):
    pytest.importorskip("ray", reason="the `ray` extra is not installed")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(f'{{"x": {i}}}\n' for i in range(10)))
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "hf_prune.cli", "select", str(data), "--selector", "random:size=3",
         "--output", str(tmp_path / "out"), "--executor", "ray", "--address", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=120,
    )
    seconds = time.perf_counter() - started
    assert out.returncode == 2, out.stderr[-2000:]
    assert "hf-prune: error: no Ray cluster at `address`='127.0.0.1:1'" in out.stderr
    assert "ray start --head" in out.stderr
    assert not (tmp_path / "out").exists()
    assert seconds < 45, f"took {seconds:.0f} s to give up"
