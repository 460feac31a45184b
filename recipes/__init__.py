"""Training recipes and benchmarks built on hf_prune (installed with it; the library never imports them).

- `recipes.image_classification`: train an image classifier on a dataset or a pruned subset
  (``accelerate launch recipes/image_classification.py ...``), recording training dynamics.
- `recipes.demo`: every selector on a small offline dataset, a linear probe each (``hf-prune-demo``).
- `recipes.trainer`: the core the recipes share (config, data, models, loop, checkpoints, dynamics, probe).
- `recipes.benchmarks`: quality and speed benchmarks (``python -m recipes.benchmarks.<name>``).

Example:
    >>> from recipes.image_classification import main
    >>> summary = main(["--dataset", "digits", "--epochs", "2", "--cpu", "--output_dir", "runs/digits"])
"""
