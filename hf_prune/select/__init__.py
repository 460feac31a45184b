"""Selectors: plain functions ``Dataset -> Dataset``, each declared with `hf_prune.select.registry.selector`.

``__all__`` is the registry's names plus the helpers that take a Dataset but are not selectors
themselves (`combine` chains two selectors, `prefix` cuts an ordered selection to a smaller budget,
`semdedup_filter` and `image_based_filter` keep the rows that pass a threshold, with no budget).
"""

# ruff: noqa: F401  (the imports are the exports: importing a module registers its selectors, and
# ``__all__`` is built from the registry, which a linter cannot read)
from . import registry
from ._ordered import prefix
from .ccs import ccs
from .centroid import easy, hard, moderate
from .cluster_score import cluster_top_k
from .combine import combine
from .d2_pruning import d2_pruning
from .dual import beta_sampling, dual, dual_beta
from .gm_matching import gm_matching, herding
from .gram_schmidt import gram_schmidt
from .image_based import image_based, image_based_filter
from .infomax import infomax
from .k_center import k_center_greedy
from .norm_sampling import norm_sampling
from .probcover import probcover
from .random_sampling import random
from .round_robin import round_robin
from .score_rank import threshold, top_k
from .semdedup import semdedup, semdedup_filter
from .submodular import disparity_min, disparity_sum, facility_location, graph_cut, log_determinant
from .typiclust import typiclust

HELPERS = ("combine", "prefix", "image_based_filter", "semdedup_filter")
__all__ = [*registry.names(), *HELPERS]
