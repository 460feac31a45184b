"""The LoRA-gradient throughput benchmark runs on a tiny shape, and every strategy it times gives the loop's values."""

from recipes.benchmarks import lora_gradient_throughput as bench


def test_benchmark_times_every_strategy_and_they_agree():
    out = bench.main(["--rows", "4", "--length", "16", "--layers", "1", "--dim", "32", "--batch-size", "2",
                      "--projection-batch-size", "4", "--repeats", "1", "--threads", "1"])
    assert set(out["gradients"]) == {"loop", "vmap", "hooks", "reference"}
    assert all(seconds > 0 for seconds in out["gradients"].values())
    # The ratios are only meaningful when every strategy computes the same per-example gradients.
    assert max(out["exactness"].values()) < 1e-5
    # Both projections of this run's gradients, with their distortion against the exact inner products.
    assert set(out["structured"]) == {"rademacher", "srht"}
    assert set(out["per_thousand"]) == {"rademacher", "srht", "before", "fastest"}
    assert all(0 < r["inner"] < 1 and 0 <= r["cosine"] < 1 for r in out["structured"].values())
    thousand = out["per_thousand"]["srht"]
    assert thousand["total"] == thousand["gradients"] + thousand["projection"] > 0
    # The target's baseline: vmap gradients with one dense pass per gradient batch (2 rows here).
    before, fastest = out["per_thousand"]["before"], out["per_thousand"]["fastest"]
    assert before["gradients"] == 1000 * out["gradients"]["vmap"]
    assert before["projection"] == 1000 * out["projection"][2]
    assert fastest["gradients"] == 1000 * min(s for m, s in out["gradients"].items() if m != "reference")
