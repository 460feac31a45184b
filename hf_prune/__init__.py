"""hf_prune: data pruning for Hugging Face datasets.

Embeddings and scores are Dataset columns (`hf_prune.embed`, `hf_prune.score`); selectors take a
Dataset and return a filtered Dataset (`hf_prune.select`) with a ``row_id`` column and provenance.

Example:
    >>> import hf_prune as hp
    >>> sub = hp.select.gm_matching(ds, fraction=0.1, embedding_column="emb", label_column="label")
    >>> hp.provenance(sub)[-1]["method"]
    'gm_matching'
"""

from . import corrupt, data, embed, hub, score, select
from .provenance import provenance
from .version import __version__

__all__ = ["corrupt", "data", "embed", "hub", "score", "select", "provenance", "__version__"]
