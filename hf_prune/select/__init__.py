"""Selectors: plain functions ``Dataset -> Dataset`` (conventions in `hf_prune.select._core`)."""

from .ccs import ccs
from .centroid import easy, hard, moderate
from .combine import combine
from .d2_pruning import d2_pruning
from .dual import beta_sampling, dual, dual_beta
from .gm_matching import gm_matching, herding
from .gram_schmidt import gram_schmidt
from .infomax import infomax
from .k_center import k_center_greedy
from .norm_sampling import norm_sampling
from .probcover import probcover
from .random_sampling import random
from .score_rank import threshold, top_k
from .submodular import disparity_min, disparity_sum, facility_location, graph_cut, log_determinant
from .typiclust import typiclust

__all__ = [
    "beta_sampling", "ccs", "combine", "d2_pruning", "dual", "dual_beta", "easy", "gm_matching",
    "gram_schmidt", "hard", "herding", "infomax", "k_center_greedy", "moderate", "norm_sampling",
    "probcover", "random", "threshold", "top_k", "typiclust",
    "facility_location", "graph_cut", "log_determinant", "disparity_min", "disparity_sum",
]
