"""InfoMax partitions solved in parallel: a local worker pool and torch.distributed ranks give the same rows.

Run as a script under ``torchrun`` (``python -m torch.distributed.run --nproc_per_node 2 <this file> OUT``)
it is the two-rank side of `test_two_ranks_return_the_single_process_rows`.
"""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hf_prune as hp
from tests.conftest import make_dataset

# The package re-exports the function under the module's name; the tests patch the module itself.
infomax_module = importlib.import_module("hf_prune.select.infomax")
REPO = Path(__file__).resolve().parents[2]
# Two classes, three parts each: six parts, so both the pool and the ranks get several.
SETTINGS = dict(fraction=0.15, score_column="score", k=5, alpha=0.5, partitions=3, label_column="label", seed=7)


def clustered(n=1200, dim=12, seed=0):
    """``n`` rows from 8 clusters with a random score and two labels (made here, no files)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(8, dim))
    emb = (centers[rng.integers(0, 8, n)] + rng.normal(size=(n, dim))).astype(np.float32)
    return make_dataset(emb, score=rng.random(n).astype(np.float32), label=rng.integers(0, 2, n))


@pytest.fixture(scope="module")
def data():
    return clustered()


@pytest.fixture(scope="module")
def single(data):
    return hp.select.infomax(data, **SETTINGS)


def test_two_workers_give_the_rows_of_one(data, single):
    # Starting the two spawned workers is most of this test's time (6 s idle, 12 s on a loaded machine).
    pooled = hp.select.infomax(data, **SETTINGS, workers=2, device="cpu")
    assert list(pooled["row_id"]) == list(single["row_id"])
    times = hp.provenance(pooled)[-1]["stage_times"]
    assert times["workers"] == 2 and times["parts"] == 6 and times["pool_start_s"] > 0
    assert times["transport"] == "shared_memory" and times["worker_threads"] >= 1
    # The parts really were solved (not skipped): each has its kernel and solve time.
    assert all(part["kernel_s"] > 0 and part["solve_s"] > 0 for part in times["per_part"])
    # A different seed moves the parts, and with them the rows: the comparison above can fail.
    assert list(hp.select.infomax(data, **{**SETTINGS, "seed": 8})["row_id"]) != list(single["row_id"])


@pytest.mark.slow  # another pool start: 6 s on an idle 2-core machine, 15 s on a loaded one
def test_rows_are_pickled_where_shared_memory_is_short(data, single, monkeypatch):
    # As in a container with a 64 MiB /dev/shm: the fallback keeps the rows.
    monkeypatch.setattr(infomax_module, "_shared_memory_room", lambda: 1024)
    pooled = hp.select.infomax(data, **SETTINGS, workers=2, device="cpu")
    assert list(pooled["row_id"]) == list(single["row_id"])
    assert hp.provenance(pooled)[-1]["stage_times"]["transport"] == "pickle"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_workers_name_the_parameter(data, bad):
    with pytest.raises((ValueError, TypeError), match="workers"):
        hp.select.infomax(data, **SETTINGS, workers=bad)


def test_bad_distributed_names_the_parameter(data):
    with pytest.raises((ValueError, TypeError), match="distributed"):
        hp.select.infomax(data, **SETTINGS, distributed="yes")


def test_stage_times_are_recorded_beside_replayable_params(data, single):
    step = hp.provenance(single)[-1]
    times = step["stage_times"]
    assert "stage_times" not in step["params"] and "workers" not in step["params"]
    assert times["workers"] == 1 and times["world_size"] == 1 and times["pool_start_s"] == 0
    assert times["transport"] is None and times["worker_threads"] is None
    parts = times["per_part"]
    assert len(parts) == times["parts"] == 6  # 2 classes × 3 parts
    assert sorted({(part["group"], part["part"]) for part in parts}) == [(g, p) for g in range(2) for p in range(3)]
    for key in ("kernel_s", "solve_s"):
        assert all(part[key] > 0 for part in parts)
        assert times[key] == pytest.approx(sum(part[key] for part in parts))
        assert times[key + "_max"] == max(part[key] for part in parts)
    assert times["read_s"] > 0
    assert times["wall_s"] >= times["kernel_s"] + times["solve_s"]
    assert sum(part["rows"] for part in parts) == len(data)
    assert sum(part["budget"] for part in parts) == len(single)
    # The params replay the selection (the measured times are not arguments).
    replay = hp.select.infomax(data, **{k: v for k, v in step["params"].items() if k not in ("fraction",)},
                               fraction=SETTINGS["fraction"])
    assert list(replay["row_id"]) == list(single["row_id"])


def test_stage_times_are_logged(data, caplog):
    with caplog.at_level("DEBUG", logger="hf_prune.select.infomax"):
        hp.select.infomax(data, **SETTINGS)
    messages = [record.getMessage() for record in caplog.records]
    assert any("kernel" in m and "solve" in m and "6 part(s)" in m for m in messages)
    assert sum(m.startswith("infomax part") for m in messages) == 6


def test_part_records_are_capped(data, monkeypatch):
    monkeypatch.setattr(infomax_module, "STAGE_TIMES_PARTS", 5)
    times = hp.provenance(hp.select.infomax(data, **SETTINGS))[-1]["stage_times"]
    assert times["parts"] == 6 and "per_part" not in times and times["kernel_s"] > 0


def test_a_failed_rank_fails_every_rank(data, monkeypatch):
    # Rank 0 of two, where rank 1 reports an error: rank 0 raises it too instead of waiting or going on.
    monkeypatch.setattr(infomax_module, "_ranks", lambda: (0, 2))

    def gather(out, mine):
        out[0], out[1] = mine, ({}, "MemoryError('part 1')")

    monkeypatch.setattr(infomax_module.torch.distributed, "all_gather_object", gather)
    with pytest.raises(RuntimeError, match=r"rank 1: MemoryError\('part 1'\)"):
        hp.select.infomax(data, **SETTINGS)
    # Without the process group (distributed=False) the same call does not gather at all.
    assert len(hp.select.infomax(data, **SETTINGS, distributed=False)) > 0


def _launch_two_ranks(out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), str(out)]
    done = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


# Two torchrun processes (gloo), each importing torch and datasets: 6 s on 2 idle cores, 14 s loaded.
def test_two_ranks_return_the_single_process_rows(data, single, tmp_path):
    _launch_two_ranks(tmp_path)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank_{rank}.json").read_text())
        assert got["world_size"] == 2
        assert got["spread"] == list(single["row_id"]), f"rank {rank}"
        assert got["everything"] == list(single["row_id"]), f"rank {rank} with distributed=False"
        # Both ranks solved some parts (r, r + 2, ...) and each saw every part's times.
        assert sorted({part["rank"] for part in got["per_part"]}) == [0, 1]
        assert [part["rank"] for part in got["per_part"]] == [0, 1, 0] * 2
        assert got["everything_world_size"] == 1
    ranks = [json.loads((tmp_path / f"rank_{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0]["fingerprint"] == ranks[1]["fingerprint"] == hp.provenance(single)[-1]["output_fingerprint"]
    assert ranks[0]["per_part"] == ranks[1]["per_part"]  # the gathered part times, the same on both ranks


def _rank_main(out: Path) -> None:
    """Under torchrun: select with the parts spread over the ranks, and again with distributed=False."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    ds = clustered()
    spread = hp.select.infomax(ds, **SETTINGS, device="cpu")
    everything = hp.select.infomax(ds, **SETTINGS, device="cpu", distributed=False)
    times = hp.provenance(spread)[-1]["stage_times"]
    result = {
        "world_size": times["world_size"], "per_part": times["per_part"], "spread": list(spread["row_id"]),
        "everything": list(everything["row_id"]),
        "everything_world_size": hp.provenance(everything)[-1]["stage_times"]["world_size"],
        "fingerprint": hp.provenance(spread)[-1]["output_fingerprint"],
    }
    (out / f"rank_{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))
