"""InfoMax partitions as Ray tasks on a local cluster: the rows of the one-process call, a lost worker included.

Every test here compares with the in-process call (no executor, ``workers=1``) with the same arguments.
The cluster is the session's ``ray_cluster`` (2 CPUs); the tests skip without the ``ray`` extra.
"""

import os
import signal
import threading
import time

import numpy as np
import pytest

import hf_prune as hp
from tests.conftest import make_dataset

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed")
psutil = pytest.importorskip("psutil")

from hf_prune.parallel.ray_executor import TaskFailed  # noqa: E402
from hf_prune.select.infomax import solve_infomax_part  # noqa: E402

TASK_TITLE = f"ray::{solve_infomax_part.__name__}"


def clustered(n=3000, dim=16, classes=3, seed=0):
    """``n`` rows from 8 clusters with a random score and ``classes`` labels (made here, no files)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(8, dim))
    emb = (centers[rng.integers(0, 8, n)] + rng.normal(size=(n, dim))).astype(np.float32)
    return make_dataset(emb, score=rng.random(n).astype(np.float32), label=rng.integers(0, classes, n))


@pytest.fixture(scope="module")
def data():
    return clustered()


# No labels: each of the 8 parts is a Ray task. Per class: each of the 3 classes is a task (the
# per-class runner's), which solves its 5 parts.
CASES = {
    "whole set, 8 parts": dict(fraction=0.1, score_column="score", k=5, partitions=8, seed=3),
    "per class, 5 parts each": dict(fraction=0.12, score_column="score", k=5, alpha=0.5, partitions=5,
                                    label_column="label", seed=11),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ray_parts_give_the_rows_of_one_process(ray_cluster, data, case):
    settings = CASES[case]
    single = hp.select.infomax(data, **settings)
    with hp.parallel.ray(progress=False) as executor:
        spread = hp.select.infomax(data, **settings)
    assert list(spread["row_id"]) == list(single["row_id"])
    step = hp.provenance(spread)[-1]
    assert step["output_fingerprint"] == hp.provenance(single)[-1]["output_fingerprint"]
    groups = 3 if "label_column" in settings else 1
    parts = groups * settings["partitions"]
    times = step["stage_times"]
    assert times["backend"] == "ray" and times["transport"] == "object_store"
    assert times["parts"] == parts and times["workers"] == executor.workers == 2 and times["worker_threads"] == 1
    # Rows gathered in the tasks (per class) or on the driver, which then shares each part (whole set).
    assert times["read_s"] > 0 and (times["share_s"] > 0) == (groups == 1)
    # Each part was really solved in its task (kernel and solve timed there) and came back to its place.
    assert all(part["kernel_s"] > 0 and part["solve_s"] > 0 for part in times["per_part"])
    assert [(part["group"], part["part"]) for part in times["per_part"]] == [
        (g, p) for g in range(groups) for p in range(settings["partitions"])]
    assert sum(part["budget"] for part in times["per_part"]) == len(single)
    assert all(part["backend"] == "ray" for part in times["per_part"])
    record = step["executor"]
    assert record["name"] == "ray" and record["infomax_parts"] == parts and record["workers"] == 2
    # What the per-class runner recorded stays beside InfoMax's counts.
    if groups > 1:
        assert record["split"] is True and record["tasks"] == groups and record["infomax_part_tasks"] == 0
    else:
        assert record["split"] is False and record["infomax_part_tasks"] == parts
        assert "partitions" in record["reason"]
    assert "executor" not in step["params"]
    # The kNN reports of the tasks are merged as in process: one exact search a part.
    assert step["knn"]["searches"] == hp.provenance(single)[-1]["knn"]["searches"] == parts
    # Another seed moves the parts and the rows: the equality above can fail.
    other = hp.select.infomax(data, **{**settings, "seed": settings["seed"] + 1})
    assert list(other["row_id"]) != list(single["row_id"])


def test_workers_of_the_call_is_ignored_with_a_log_line(ray_cluster, data, caplog):
    settings = CASES["whole set, 8 parts"]
    single = hp.select.infomax(data, **settings)
    with caplog.at_level("WARNING", logger="hf_prune.select.infomax"):
        with hp.parallel.ray(workers=1, progress=False):
            spread = hp.select.infomax(data, **settings, workers=4)
    assert any("`workers`=4 is ignored" in r.getMessage() for r in caplog.records)
    assert list(spread["row_id"]) == list(single["row_id"])
    times = hp.provenance(spread)[-1]["stage_times"]
    assert times["workers"] == 1 and times["backend"] == "ray"  # the executor's workers, no local pool
    assert times["pool_start_s"] == 0


def test_a_gpu_device_is_refused_before_any_work(ray_cluster, data):
    with hp.parallel.ray(progress=False), pytest.raises(ValueError, match="`device`='cuda'.*CPUs only"):
        hp.select.infomax(data, **CASES["whole set, 8 parts"], device="cuda")


def test_one_global_part_is_solved_on_the_driver(ray_cluster, data, caplog):
    settings = dict(fraction=0.1, score_column="score", k=5, seed=0)  # partitions=1, no labels
    single = hp.select.infomax(data, **settings)
    with caplog.at_level("INFO", logger="hf_prune.select.infomax"), hp.parallel.ray(progress=False):
        driver = hp.select.infomax(data, **settings)
    assert list(driver["row_id"]) == list(single["row_id"])
    step = hp.provenance(driver)[-1]
    assert step["stage_times"]["backend"] == "in_process" and step["executor"]["infomax_parts"] == 0
    assert step["executor"]["split"] is False and "cannot be split" in step["executor"]["reason"]
    assert any("nothing to split" in r.getMessage() for r in caplog.records)


# Parts long enough (3,000 iterations: about a second each) for a poll to find their worker mid-task.
SLOW = dict(fraction=0.1, score_column="score", k=5, partitions=4, iterations=3000, seed=5)


class Killer(threading.Thread):
    """SIGKILLs the first Ray worker found running an InfoMax part (its process title), once.

    Only this process's descendants are searched (the local cluster's raylet and its workers are), so a
    Ray job of another process on the machine is never touched.
    """

    def __init__(self):
        super().__init__(daemon=True)
        self.killed: list[int] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set() and not self.killed:
            for proc in psutil.Process().children(recursive=True):
                try:
                    cmdline = proc.cmdline()
                except psutil.Error:  # ended meanwhile
                    continue
                if cmdline and cmdline[0].startswith(TASK_TITLE):
                    os.kill(proc.pid, signal.SIGKILL)
                    self.killed.append(proc.pid)
                    break
            time.sleep(0.02)


def run_with_a_kill(data, **executor_options):
    killer = Killer()
    killer.start()
    try:
        with hp.parallel.ray(progress=False, **executor_options):
            return hp.select.infomax(data, **SLOW), killer.killed
    finally:
        killer.stop.set()
        killer.join()


def test_a_killed_worker_is_retried_and_the_rows_are_unchanged(ray_cluster):
    data = clustered(n=2400, seed=1)
    single = hp.select.infomax(data, **SLOW)
    spread, killed = run_with_a_kill(data, max_retries=3)
    assert killed, "no worker running an InfoMax part was found to kill"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    # No row missing, none twice, the same rows in the same order.
    assert list(spread["row_id"]) == list(single["row_id"])
    assert len(set(spread["row_id"])) == len(spread)
    assert hp.provenance(spread)[-1]["stage_times"]["parts"] == SLOW["partitions"]


def test_a_part_that_keeps_failing_is_named(ray_cluster):
    data = clustered(n=2400, seed=1)
    with pytest.raises(TaskFailed, match=r"infomax partitions: group 0, part \d of 4 \(600 rows\).*worker was lost"):
        run_with_a_kill(data, max_retries=0)
