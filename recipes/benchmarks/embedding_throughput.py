"""Embedding throughput: the ``Dataset.map`` pipeline versus a bare loop over the same model.

Both paths embed the same rows of an on-disk image dataset with the same model, image processor,
pooling, device, dtype and batch size:

- ``bare loop``: ``for start in range(0, N, B): batch = ds[start:start + B]`` → decode → processor
  → forward → pool → ``.cpu().numpy()``, collected into one array (no ``datasets`` writing).
- ``map``: ``hp.embed.ImageEmbedder(...).map(ds, batch_size=B, load_from_cache_file=False)``, which
  also validates, converts and writes the declared float32 column to an Arrow cache file.

The ratio map/bare (rows/s) is the price of having the embedding as a cached, fingerprinted
Dataset column; the design target is a loss of at most 10%. Runs alternate (bare, map, bare, map,
...) after one warm-up batch each, and the median of ``--repeats`` is reported, so background load
affects both alike. A third line times the model alone on pre-processed tensors, for context.

Data: Fashion-MNIST test images (28×28 grayscale, read from the IDX files when they are installed
under ``/usr/share/datasets/fashion-mnist``), else seeded synthetic RGB images. The model is a
randomly initialised ViT built from a config (no download) unless ``--model`` names a checkpoint.

Default (CPU, a few minutes on 2 cores):
    python recipes/benchmarks/embedding_throughput.py

A larger GPU run with a real checkpoint:
    python recipes/benchmarks/embedding_throughput.py --device cuda --num-rows 20000 --batch-size 256 \
        --model facebook/dinov2-small --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import numpy as np
import torch
from datasets import Dataset, disable_progress_bars, load_from_disk
from datasets import Image as ImageFeature
from PIL import Image

import hf_prune as hp
from hf_prune.embed.image import load_images, pool_outputs
from hf_prune.ops.device import autocast_dtype
from recipes.trainer.metrics import timed

FASHION_MNIST = os.path.join(hp.data.DEFAULT_FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-rows", type=int, default=384, help="rows embedded per run")
    p.add_argument("--batch-size", type=int, default=32, help="rows per batch (map batch = forward batch)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per path (median reported)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    p.add_argument("--dtype", default=None, help="autocast dtype, e.g. bfloat16 or float32 (default: auto)")
    p.add_argument("--model", default=None, help="a Hub id / local path (default: a random ViT from a config)")
    p.add_argument("--image-size", type=int, default=64, help="processor output size for the random ViT")
    p.add_argument("--hidden-size", type=int, default=384, help="random ViT width")
    p.add_argument("--layers", type=int, default=12, help="random ViT depth")
    p.add_argument("--patch-size", type=int, default=8, help="random ViT patch size")
    p.add_argument("--data", choices=["auto", "fashion-mnist", "synthetic"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def load_images_array(kind: str, n: int) -> np.ndarray:
    if kind in ("auto", "fashion-mnist") and os.path.exists(FASHION_MNIST):
        return np.resize(hp.data.read_idx(FASHION_MNIST), (n, 28, 28))  # repeats rows when n > 10,000
    if kind == "fashion-mnist":
        raise FileNotFoundError(f"{FASHION_MNIST} not found; use --data synthetic")
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def build_model(args):
    import transformers as T

    if args.model:
        return T.AutoModel.from_pretrained(args.model).eval(), T.AutoImageProcessor.from_pretrained(args.model)
    torch.manual_seed(0)
    config = T.ViTConfig(hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                         num_attention_heads=max(1, args.hidden_size // 64), intermediate_size=4 * args.hidden_size,
                         image_size=args.image_size, patch_size=args.patch_size)
    processor_cls = getattr(T, "ViTImageProcessorPil", T.ViTImageProcessor)
    return T.ViTModel(config, add_pooling_layer=False).eval(), processor_cls(size={"height": args.image_size, "width": args.image_size})


def bare_loop(ds, model, processor, embedder, device, batch_size) -> np.ndarray:
    """The same work without datasets.map: read batch, decode, preprocess, forward, pool, to numpy."""
    out = []
    with torch.inference_mode(), embedder.autocast(device):
        for start in range(0, len(ds), batch_size):
            images = load_images(ds[start : start + batch_size]["image"], column="image", mode=embedder.mode)
            pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
            pooled = pool_outputs(model(pixel_values=pixel_values), embedder.pooling, config=model.config,
                                  pixel_values=pixel_values)
            out.append(pooled.float().cpu().numpy())
    return np.concatenate(out)


def model_only(model, pixel_batches, embedder, device) -> None:
    with torch.inference_mode(), embedder.autocast(device):
        for pixel_values in pixel_batches:
            model(pixel_values=pixel_values).last_hidden_state.float().cpu()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> dict:
    args = make_parser().parse_args(argv)
    disable_progress_bars()
    if args.threads:
        torch.set_num_threads(args.threads)
    arrays = load_images_array(args.data, args.num_rows)
    model, processor = build_model(args)
    embedder = hp.embed.ImageEmbedder(model, processor=processor, device=args.device, dtype=args.dtype,
                                      batch_size=args.batch_size)
    device = embedder.target_device()
    model.to(device)

    with tempfile.TemporaryDirectory() as tmp:
        # On disk, like a real dataset: map then writes its column to an Arrow cache file.
        Dataset.from_dict({"image": [Image.fromarray(a) for a in arrays]}).cast_column("image", ImageFeature()) \
            .save_to_disk(os.path.join(tmp, "ds"))
        ds = load_from_disk(os.path.join(tmp, "ds"))
        warm = ds.select(range(min(args.batch_size, len(ds))))
        bare_loop(warm, model, processor, embedder, device, args.batch_size)
        embedder.map(warm, load_from_cache_file=False)

        bare_times, map_times, reference = [], [], None
        for _ in range(args.repeats):
            seconds, reference = timed(lambda: bare_loop(ds, model, processor, embedder, device, args.batch_size))
            bare_times.append(seconds)
            seconds, mapped = timed(lambda: embedder.map(ds, batch_size=args.batch_size, load_from_cache_file=False))
            map_times.append(seconds)
        column = mapped.with_format("numpy")["emb"]
        max_diff = float(np.abs(np.asarray(column) - reference).max())

        pixel_batches = [
            processor(images=load_images(ds[s : s + args.batch_size]["image"], column="image", mode=embedder.mode),
                      return_tensors="pt")["pixel_values"].to(device)
            for s in range(0, len(ds), args.batch_size)
        ]
        model_times = [timed(lambda: model_only(model, pixel_batches, embedder, device))[0] for _ in range(args.repeats)]

    n = len(arrays)
    rates = {name: n / statistics.median(t) for name, t in
             (("bare loop", bare_times), ("map", map_times), ("model only", model_times))}
    ratio = rates["map"] / rates["bare loop"]
    name = args.model or f"random ViT (d={args.hidden_size}, L={args.layers}, {args.image_size}px/{args.patch_size})"
    print(f"model: {name}; device: {device}; autocast: {autocast_dtype(device, embedder.dtype)}; "
          f"threads: {torch.get_num_threads()}")
    print(f"rows: {n}; batch size: {args.batch_size}; repeats: {args.repeats} (median); "
          f"data: {'fashion-mnist' if arrays.ndim == 3 else 'synthetic'} {arrays.shape[1]}x{arrays.shape[2]}")
    for key, rate in rates.items():
        times = {"bare loop": bare_times, "map": map_times, "model only": model_times}[key]
        print(f"{key:>11}: {rate:9.1f} rows/s   (runs: {', '.join(f'{t:.2f}s' for t in times)})")
    print(f"map / bare loop = {ratio:.3f}  ({(1 - ratio) * 100:+.1f}% lost to map; target: at most 10%)")
    print(f"max |map column - bare loop| = {max_diff:.2e}")
    return {"rates": rates, "ratio": ratio, "max_diff": max_diff}


if __name__ == "__main__":
    main()
