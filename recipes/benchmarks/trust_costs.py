"""What the safety features cost: atomic, checksummed checkpoints and fingerprints that follow the weights.

Two measurements, each the median of ``--repeats`` runs, in one process:

1. **Checkpoints**: a CIFAR ResNet-18 with its SGD-momentum state through ``Accelerator(cpu=True)``;
   ``accelerator.save_state`` into a folder (the old way) against the recipe's ``save_checkpoint``
   (staged folder, SHA-256 completion marker, rename), and ``find_checkpoint(..., "latest")``, which
   re-hashes the newest checkpoint before trusting it.
2. **Fingerprints**: for a ResNet-18 ``RandomNetEmbedder`` and a 6×256 ViT ``ImageEmbedder`` (both
   built from configs, offline): a full weights checksum, the check on an unchanged model (tensor
   identity and version counters only), ``datasets``' ``Hasher.hash`` of the embedder (what ``map``
   calls once), and the fingerprint after an in-place change (one full checksum again).

    python recipes/benchmarks/trust_costs.py --repeats 5
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

import hf_prune as hp
from hf_prune.embed import _base
from hf_prune.embed.cifar_resnet import cifar_resnet
from recipes.trainer.checkpoints import find_checkpoint, save_checkpoint
from recipes.trainer.config import library_versions
from recipes.trainer.metrics import timed


def checkpoint_costs(root: Path, repeats: int) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = cifar_resnet("resnet18", num_classes=10, in_channels=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.zeros(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # so the optimizer has momentum buffers to save
    model, optimizer = accelerator.prepare(model, optimizer)

    def plain():
        shutil.rmtree(root / "plain", ignore_errors=True)
        accelerator.save_state(str(root / "plain"))

    plain_s, _ = timed(plain, repeats)
    atomic_s, _ = timed(lambda: save_checkpoint(accelerator, root / "checkpoints" / "epoch_1"), repeats)
    find_s, _ = timed(lambda: find_checkpoint(root / "checkpoints", "latest"), repeats)
    size = sum(p.stat().st_size for p in (root / "checkpoints" / "epoch_1").iterdir()) / 2**20
    print(f"\ncheckpoint of {size:.1f} MiB (ResNet-18 + SGD momentum)")
    print("| step | time (s) |\n|---|---|")
    print(f"| accelerator.save_state | {plain_s:.3f} |")
    print(f"| save_checkpoint (staged, SHA-256 marker, rename) | {atomic_s:.3f} |")
    print(f"| find_checkpoint('latest') (verifies the marker) | {find_s:.3f} |")


def fingerprint_costs(repeats: int) -> None:
    import transformers
    from datasets.fingerprint import Hasher

    vit = transformers.ViTModel(transformers.ViTConfig(
        hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024, image_size=32, patch_size=4,
    )).eval()
    cases = {
        "RandomNetEmbedder (CIFAR ResNet-18)": hp.embed.RandomNetEmbedder(seed=0),
        "ImageEmbedder (ViT 6×256)": hp.embed.ImageEmbedder(
            vit, processor=transformers.ViTImageProcessor(size={"height": 32, "width": 32})
        ),
    }
    print("\n| embedder | parameters | full checksum (ms) | check, unchanged model (ms) | Hasher.hash (ms) "
          "| fingerprint after an in-place change (ms) |\n|---|---|---|---|---|---|")
    for name, embedder in cases.items():
        model = embedder._modules()["model"]
        parameter = next(model.parameters())
        full, _ = timed(lambda m=model: _base.weights_checksum(m), repeats)
        embedder.fingerprint()
        check, _ = timed(embedder._weights_checksums, repeats)
        hashed, _ = timed(lambda e=embedder: Hasher.hash(e), repeats)

        def changed(e=embedder, p=parameter):
            with torch.no_grad():
                p.add_(0)  # bumps torch's version counter: the next fingerprint re-reads every tensor
            e.fingerprint()

        after, _ = timed(changed, repeats)
        millions = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {name} | {millions:.1f} M | {full * 1e3:.1f} | {check * 1e3:.2f} | {hashed * 1e3:.2f} | {after * 1e3:.1f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    args = parser.parse_args(argv)
    print(library_versions())
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint_costs(Path(scratch), args.repeats)
    fingerprint_costs(max(args.repeats, 20))


if __name__ == "__main__":
    main()
