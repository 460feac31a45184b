"""The executor switch without a cluster: what goes to Ray pickles, gives the same rows, and Ray stays unimported.

`PickleExecutor` stands in for `hf_prune.parallel.ray_executor.RayExecutor` in this process: every
shared object, task argument and result goes through cloudpickle (what Ray does to them), and a
shared object is unpickled afresh for every task, as a task on another worker sees it. So every
registered selector's per-class ``pick`` is checked to pickle (without dragging a Dataset along)
and to give the rows, columns and provenance of the one-process call, in the default test run.
"""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from datasets import Dataset

import hf_prune as hp
from hf_prune import parallel
from hf_prune.ops.columns import add_column
from hf_prune.parallel.ray_executor import RayExecutor
from hf_prune.provenance import provenance

from .select.test_contract import BUDGETED, DATA, by_name, call

cloudpickle = pytest.importorskip("cloudpickle")


class _NoDatasetPickler(cloudpickle.Pickler):
    """cloudpickle that refuses a `datasets.Dataset`: a task must get arrays, not the whole table."""

    def reducer_override(self, obj):
        if isinstance(obj, Dataset):
            raise AssertionError("a Dataset was pickled into a Ray task")
        return super().reducer_override(obj)


def _dumps(value) -> bytes:
    buffer = io.BytesIO()
    _NoDatasetPickler(buffer).dump(value)
    return buffer.getvalue()


class _Ref:
    def __init__(self, data: bytes):
        self.data = data


class PickleExecutor:
    """`RayExecutor`'s interface in this process, with Ray's pickling (see the module docstring)."""

    name = "pickle"
    workers = 2
    cpus_per_task = 1.0
    max_retries = 0
    address = None
    gpus_per_actor = 1.0

    def __init__(self):
        self.jobs: list[tuple[str, list[str]]] = []
        self.shared_bytes: list[int] = []
        self.gpus: list[float] = []

    def share(self, value):
        data = _dumps(value)
        self.shared_bytes.append(len(data))
        return _Ref(data)

    def run_tasks(self, fn, calls, *, labels, rows=None, desc="tasks", gpus=0):
        assert fn.__module__.startswith("hf_prune.") and "<locals>" not in fn.__qualname__  # importable by workers
        results = []
        for args in calls:
            args = [cloudpickle.loads(a.data if isinstance(a, _Ref) else _dumps(a)) for a in args]
            results.append(cloudpickle.loads(_dumps(fn(*args))))
        self.jobs.append((fn.__name__, list(labels)))
        self.gpus.append(gpus)
        return results

    def record(self, **facts):
        return {"name": self.name, "workers": self.workers, **facts}


@pytest.fixture
def pickle_executor():
    executor = PickleExecutor()
    token = parallel._CURRENT.set(executor)
    yield executor
    parallel._CURRENT.reset(token)


_TIMINGS = ("build_s", "search_s", "recall_s", "seconds")


def _comparable(step: dict) -> dict:
    """A provenance step without what differs between runs of the same call: timings, the executor entry."""
    step = {key: value for key, value in step.items() if key not in ("executor", "created", "stage_times")}
    if "knn" in step:
        knn = {k: v for k, v in step["knn"].items() if k not in _TIMINGS}
        knn["reports"] = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in knn["reports"]]
        step["knn"] = knn
    return step


@by_name(BUDGETED)
def test_every_selector_per_class_pickles_and_gives_the_one_process_rows(info, pickle_executor):
    options = {"label_column": "label", "size": 15}
    if info.ordered:
        options["rank_column"] = "rank"
    local = _local(call, info, **options)
    remote = call(info, **options)
    assert remote.column_names == local.column_names
    assert remote.to_dict() == local.to_dict()
    assert _comparable(provenance(remote, warn=False)[-1]) == _comparable(provenance(local, warn=False)[-1])
    executor_facts = provenance(remote, warn=False)[-1]["executor"]
    assert executor_facts["name"] == "pickle" and executor_facts["split"] is True
    # The three classes went out as tasks, each named by its class and rows.
    tasks = [labels for fn, labels in pickle_executor.jobs if fn == "pick_group"]
    assert [len(labels) for labels in tasks] == [3]
    assert tasks[0][0].startswith("class 0 of 'label' (24 rows, positions 0–23")


def test_class_tasks_hold_a_gpu_where_this_process_sees_cuda(pickle_executor, monkeypatch):
    import torch

    hp.select.random(DATA, size=10, label_column="label")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    sub = hp.select.random(DATA, size=10, label_column="label")
    assert pickle_executor.gpus == [0.0, 1.0]
    assert provenance(sub, warn=False)[-1]["executor"]["gpus_per_task"] == 1.0


def test_one_group_runs_on_the_driver_and_says_why(pickle_executor):
    sub = hp.select.herding(DATA, size=10, embedding_column="emb")
    assert pickle_executor.jobs == []  # nothing was sent
    facts = provenance(sub, warn=False)[-1]["executor"]
    assert facts["split"] is False and facts["tasks"] == 0 and "one global problem" in facts["reason"]
    assert np.asarray(sub["row_id"]).tolist() == np.asarray(
        _local(hp.select.herding, DATA, size=10, embedding_column="emb")["row_id"]).tolist()
    ccs = provenance(hp.select.ccs(DATA, size=10, score_column="score"), warn=False)[-1]["executor"]
    assert ccs["split"] is False and "strata are sampled in one vectorised pass" in ccs["reason"]


def _local(fn, *args, **kwargs):
    token = parallel._CURRENT.set(None)
    try:
        return fn(*args, **kwargs)
    finally:
        parallel._CURRENT.reset(token)


def test_semdedup_clusters_go_out_in_cost_balanced_batches(pickle_executor):
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(400, 8)).astype(np.float32)
    emb[200:260] = emb[:60] + 1e-4 * rng.normal(size=(60, 8)).astype(np.float32)  # near-duplicates
    ds = Dataset.from_dict({"i": list(range(400))})
    ds = add_column(ds, "emb", emb)
    kwargs = {"embedding_column": "emb", "n_clusters": 20, "seed": 1}
    remote = hp.select.semdedup(ds, fraction=0.8, **kwargs)
    local = _local(hp.select.semdedup, ds, fraction=0.8, **kwargs)
    assert np.asarray(remote["row_id"]).tolist() == np.asarray(local["row_id"]).tolist()
    remote_eps = hp.select.semdedup_filter(ds, eps=0.01, **kwargs)
    local_eps = _local(hp.select.semdedup_filter, ds, eps=0.01, **kwargs)
    assert np.asarray(remote_eps["row_id"]).tolist() == np.asarray(local_eps["row_id"]).tolist()
    assert len(remote_eps) < 400  # the near-duplicates were found
    jobs = [labels for fn, labels in pickle_executor.jobs if fn == "cluster_similarities"]
    assert len(jobs) == 2 and all(len(labels) == 4 * PickleExecutor.workers for labels in jobs)  # 20 clusters, 8 tasks
    facts = provenance(remote, warn=False)[-1]["executor"]
    assert facts["split"] is True and facts["groups"] == 20 and facts["tasks"] == 8


def test_cost_batches_balance_the_squared_sizes():
    from hf_prune.select.semdedup import cost_batches

    # Costs 10,000, 4,900 and 3,600 for the three largest; the small ones all fit under 4,900.
    assert cost_batches([100, 10, 10, 10, 70, 60, 1, 1], 3) == [[0], [1, 2, 3, 5, 6, 7], [4]]
    assert cost_batches([3], 8) == [[0]]
    assert cost_batches([2, 2, 2, 2], 2) == [[0, 2], [1, 3]]


def test_chained_selections_keep_row_ids(pickle_executor):
    first = hp.select.random(DATA, size=40, label_column="label", seed=2)
    second = hp.select.herding(first, size=12, embedding_column="emb", label_column="label")
    local_first = _local(hp.select.random, DATA, size=40, label_column="label", seed=2)
    local_second = _local(hp.select.herding, local_first, size=12, embedding_column="emb", label_column="label")
    assert np.asarray(second["row_id"]).tolist() == np.asarray(local_second["row_id"]).tolist()
    # row_id maps back to the original rows, not to positions in `first`.
    assert np.asarray(DATA.select(np.asarray(second["row_id"]))["emb"]).tolist() == np.asarray(second["emb"]).tolist()


def test_bad_input_inside_a_class_is_the_same_error_type(pickle_executor):
    with pytest.raises(ValueError, match="`n_clusters`=18 is larger than the number of rows in class 2"):
        hp.select.semdedup(DATA, size=10, embedding_column="emb", n_clusters=18, label_column="label")


# --- Ray stays out of the default path ------------------------------------------------------------


def test_without_an_executor_nothing_imports_ray():
    code = (
        "import sys\n"
        "import hf_prune as hp, hf_prune.select, hf_prune.cli, hf_prune.parallel, hf_prune.pipeline\n"
        "from datasets import Dataset\n"
        "import numpy as np\n"
        "ds = Dataset.from_dict({'label': [0, 1] * 20, 'emb': np.random.default_rng(0).normal(size=(40, 4)).tolist()})\n"
        "hp.select.herding(ds, size=6, embedding_column='emb', label_column='label')\n"
        "hp.select.semdedup(ds, size=30, embedding_column='emb', n_clusters=4)\n"
        "hf_prune.cli.make_parser(['select', 'x', '--selector', 'random:size=1'])\n"
        "print('ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_ray_missing_is_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match=r"pip install hf_prune\[ray\]"):
        with hp.parallel.ray():
            pass
    assert hp.parallel.current_executor() is None


@pytest.mark.parametrize(("options", "message"), [
    ({"workers": 0}, "workers"),
    ({"max_retries": -1}, "max_retries"),
    ({"cpus_per_task": 0}, "cpus_per_task"),
    ({"gpus_per_actor": -1}, "gpus_per_actor"),
    ({"address": " "}, "address"),
])
def test_bad_executor_options_are_value_errors_naming_them(options, message):
    with pytest.raises(ValueError, match=f"`{message}`"):
        RayExecutor(**options)


# --- the CLI switch, before any work ---------------------------------------------------------------


def _cli(tmp_path, *flags):
    from hf_prune.cli import main

    data = tmp_path / "data.jsonl"
    data.write_text("".join(f'{{"x": {i}}}\n' for i in range(10)))
    return main(["select", str(data), "--selector", "random:size=3", "--output", str(tmp_path / "out"), *flags])


def test_cli_executor_flags_are_checked_before_any_work(tmp_path, capsys):
    assert _cli(tmp_path, "--workers", "2") == 2
    assert "--workers apply to `--executor ray` only" in capsys.readouterr().err
    assert _cli(tmp_path, "--executor", "ray", "--workers", "0") == 2
    assert "`--workers` must be at least 1, got 0" in capsys.readouterr().err
    assert _cli(tmp_path, "--executor", "ray", "--max-retries", "-1") == 2
    assert "`--max-retries` must be at least 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_without_ray_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert _cli(tmp_path, "--executor", "ray") == 2
    assert "hf-prune: error: Ray is needed for hp.parallel.ray / --executor ray: `pip install hf_prune[ray]`" in (
        capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
    assert _cli(tmp_path) == 0  # the local default needs no Ray
