"""The ProbCover stage benchmark on a tiny pool: every stage timed alone and loaded, the same picks in
every run, the competing job stopped and the results stored."""

import json

import pytest

from recipes.benchmarks import probcover_stages as bench


@pytest.mark.parametrize("purity", [False, True], ids=["scale_delta", "purity_rule"])
def test_stages_are_timed_alone_and_loaded_with_the_same_picks(tmp_path, purity):
    out = bench.main(["--rows", "3000", "--fraction", "0.02", "--knn-index", "flat",
                      "--workdir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")]
                     + (["--purity"] if purity else []))
    runs = out["runs"]
    assert [r["loaded"] for r in runs] == [False, True] and len({r["picks"] for r in runs}) == 1
    timed = {"normalise", "graph", "greedy"} | ({"pseudo_labels", "purity_delta"} if purity else set())
    for run in runs:
        assert timed <= set(run) and all(run[s] > 0 for s in timed)
        assert run["edges"] >= 3000  # every point covers itself
    assert json.loads((tmp_path / "out" / "results.json").read_text())["runs"] == runs
    table = bench.report(out)
    assert "| greedy |" in table and "| total |" in table and ("| purity_delta |" in table) == purity


def test_delta_only_alone_stops_at_the_purity_rule(tmp_path):
    out = bench.main(["--rows", "3000", "--fraction", "0.02", "--knn-index", "ivf", "--purity", "--delta-only",
                      "--alone", "--workdir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")])
    (run,) = out["runs"]
    assert not run["loaded"] and "graph" not in run and run["purity_delta"] > 0 and run["delta"] > 0
    assert run["purity_pass"]["index"] == "ivf" and 0 < run["purity_pass"]["recall_at_k"] <= 1
    assert "| purity_delta |" in bench.report(out) and "| graph |" not in bench.report(out)
    with pytest.raises(SystemExit, match="--purity"):
        bench.main(["--delta-only"])
