"""Shared numeric kernels: column conversion, kNN, k-means, geometric median, sampling, devices.

The bottom layer of the package: `hf_prune.ops.checks` holds the argument checks every package uses
(one seed rule among them) and `hf_prune.ops.arrow` is the one module that touches `datasets.Dataset`
internals. Nothing here imports from the layers above (``tests/test_layering.py``).
"""
