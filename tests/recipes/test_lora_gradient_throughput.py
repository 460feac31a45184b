"""The LoRA-gradient throughput benchmark runs on a tiny shape, and every strategy it times gives the loop's values."""

from recipes.benchmarks import lora_gradient_throughput as bench


def test_benchmark_times_every_strategy_and_they_agree():
    out = bench.main(["--rows", "4", "--length", "16", "--layers", "1", "--dim", "32", "--batch-size", "2",
                      "--projection-batch-size", "4", "--repeats", "1", "--threads", "1"])
    assert set(out["gradients"]) == {"loop", "vmap", "hooks", "reference"}
    assert all(seconds > 0 for seconds in out["gradients"].values())
    # The ratios are only meaningful when every strategy computes the same per-example gradients.
    assert max(out["exactness"].values()) < 1e-5
