"""The k-NN-under-load benchmark on a tiny pool: every selector timed with the policy off and on, alone and
loaded, the competing job stopped, the rows compared and the results stored."""

import json

import pytest

from recipes.benchmarks import knn_under_load as bench


def test_each_selector_runs_off_and_on_alone_and_loaded_and_keeps_its_rows(tmp_path, monkeypatch):
    loads = []
    original = bench.CompetingLoad.__exit__

    def leave(self, *exc):
        loads.append(self)
        return original(self, *exc)

    monkeypatch.setattr(bench.CompetingLoad, "__exit__", leave)
    out = bench.main(["--rows", "2000", "--fraction", "0.02", "--rounds", "1", "--selectors", "typiclust,kmeans",
                      "--workdir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")])
    runs = out["runs"]
    assert {(r["selector"], r["condition"], r["policy"]) for r in runs} == {
        (s, c, p) for s in ("typiclust", "kmeans") for c in ("alone", "loaded") for p in ("off", "on")}
    assert len(loads) == 4 and all(load.proc.poll() is not None for load in loads)  # one job per loaded run, stopped
    for name in ("typiclust", "kmeans"):
        assert len({r["rows"] for r in runs if r["selector"] == name}) == 1
    assert json.loads((tmp_path / "out" / "results.json").read_text())["runs"] == runs
    table = bench.report(out)
    assert "| typiclust | loaded |" in table and "| yes |" in table


def test_unknown_selector():
    with pytest.raises(SystemExit, match="unknown --selectors"):
        bench.main(["--selectors", "herding"])
