"""The greedy-under-load benchmark runs on a tiny pool: every selector timed in every condition, the competing
job stopped afterwards, the thread settings restored and the results stored."""

import json

import pytest
import torch

from recipes.benchmarks import greedy_under_load as bench


def test_every_selector_is_timed_in_every_condition_and_the_load_is_stopped(tmp_path, monkeypatch):
    started = []
    original = bench.CompetingJob.__enter__

    def enter(self):
        started.append(self)
        return original(self)

    monkeypatch.setattr(bench.CompetingJob, "__enter__", enter)
    threads = torch.get_num_threads()
    out = bench.main(["--sizes", "400x8", "--picks", "3", "--output-dir", str(tmp_path)])
    assert torch.get_num_threads() == threads
    runs = out["runs"]
    assert {(r["method"], r["condition"], r["policy"]) for r in runs} == {
        (m, c, p) for m in bench.METHODS for c in bench.CONDITIONS for p in bench.POLICIES}
    assert all(r["floor_ms"] > 0 and r["ms_per_pick"] >= 0 and r["seconds_3"] > 0 for r in runs)
    # One competing process while loaded, none idle; every one has exited.
    assert sorted(len(job.children) for job in started) == [0, 1]
    assert all(child.poll() is not None for job in started for child in job.children)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["runs"] == runs and "| 400 × 8 | herding |" in stored["table"]


def test_bad_options():
    with pytest.raises(ValueError, match="--sizes"):
        bench.parse_sizes("100by8")
    with pytest.raises(ValueError, match="--methods"):
        bench.main(["--methods", "typiclust", "--sizes", "50x2"])
    with pytest.raises(ValueError, match="--picks"):
        bench.main(["--picks", "1", "--sizes", "50x2"])
