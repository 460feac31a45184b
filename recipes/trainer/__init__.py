"""The trainer core the recipes share, one responsibility per module:

- `config`: config dataclasses from the command line and ``--config x.yaml``; run metadata and JSON.
- `data`: the subset to train on (saved dataset, Hub id or selector spec), batch size by pruning ratio,
  in-memory image tensors, the resumable epoch sampler, augmentation, channel statistics.
- `models`: the small CNN, transformers image models, the CIFAR ResNets, input normalisation.
- `loop`: the accelerate training loop (cosine schedule, resumable epochs, evaluation).
- `checkpoints`: checkpoints a kill cannot leave half-written (save, verify, find, load, prune).
- `dynamics`: recording training dynamics from the loop, saving them, and the demo's proxy model.
- `probe`: linear probes on frozen features.
- `llm`: causal LMs for instruction tuning (tiny Llama, SmolLM2 from its GGUF, Hub ids) and LoRA adapters.
- `warmup`: LESS warm-up checkpoints (adapter, Adam moments by LoRA parameter name, mean lr per epoch).
- `metrics`: mean ± std over seeds and timing.

Example:
    >>> from recipes.trainer.loop import TrainState, train_epochs
    >>> from recipes.trainer.checkpoints import find_checkpoint
"""
