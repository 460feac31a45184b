"""Straightforward reference implementations the benchmarks check hf_prune's selectors against.

Example:
    >>> from recipes.benchmarks.references import dual, herding, infomax, norm_gs
"""
