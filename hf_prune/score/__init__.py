"""Scores as Dataset columns: each function returns the Dataset with one new float32 column."""

from .clip_score import clip_score
from .dynamics import aum, dual, dyn_unc, el2n, entropy, forgetting, margin, tdds
from .feature_norm import feature_norm
from .grand import grand
from .less import less
from .rds import rds
from .ssp import ssp

__all__ = [
    "aum", "clip_score", "dual", "dyn_unc", "el2n", "entropy", "feature_norm", "forgetting", "grand",
    "less", "margin", "rds", "ssp", "tdds",
]
