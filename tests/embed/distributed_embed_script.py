"""One process of the launched `map_distributed` test: embed a tiny image dataset, save what it got.

Run by tests/embed/test_distributed.py as
``accelerate launch --multi_gpu --num_processes 2 distributed_embed_script.py OUT`` on a CPU machine.
"""

import json
import sys
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, Image, Value

ROWS, SIDE, BATCH = 37, 8, 4  # 10 map batches: 5 per process, the last one short


def tiny_images() -> Dataset:
    """The same dataset (and fingerprint) in every process: random 8×8 RGB images from a fixed seed."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(ROWS)]
    features = Features({"row_id": Value("int64"), "image": Image()})
    return Dataset.from_dict({"row_id": list(range(ROWS)), "image": images}, features=features)


def tiny_embedder():
    import hf_prune as hp

    # The untrained CIFAR ResNet-18 (conv + batch norm): batch composition could change its numbers.
    return hp.embed.RandomNetEmbedder(seed=3, image_column="image", output_column="emb", batch_size=2, device="cpu")


def main(out: Path) -> None:
    import torch

    import hf_prune as hp

    torch.set_num_threads(1)
    result = hp.embed.map_distributed(tiny_images(), tiny_embedder(), output_dir=out / "shards", batch_size=BATCH)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    np.save(out / f"emb_{rank}.npy", np.asarray(result["emb"], dtype=np.float32))
    info = {"rank": rank, "world": world, "row_id": list(result["row_id"]), "columns": result.column_names,
            "method": hp.provenance(result)[-1]["method"]}
    (out / f"rank_{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
