"""hf_prune: data pruning for Hugging Face datasets.

Embeddings and scores are Dataset columns (`hf_prune.embed`, `hf_prune.score`); selectors take a
Dataset and return a filtered Dataset (`hf_prune.select`) with a ``row_id`` column and provenance.

The subpackages are imported on first use (PEP 562), so ``import hf_prune`` and ``hf-prune --help``
do not load torch, transformers or datasets.

Example:
    >>> import hf_prune as hp
    >>> sub = hp.select.gm_matching(ds, fraction=0.1, embedding_column="emb", label_column="label")
    >>> hp.provenance(sub)[-1]["method"]
    'gm_matching'
"""

import importlib

from .provenance import provenance
from .version import __version__

_SUBPACKAGES = ("corrupt", "data", "embed", "hub", "parallel", "score", "select")
# Reachable as attributes too (``hp.dynamics.attach_dynamics``), as they were when everything was eager.
_MODULES = ("cli", "dynamics", "ops")

__all__ = [*_SUBPACKAGES, "provenance", "__version__"]


def __getattr__(name: str):
    if name in _SUBPACKAGES or name in _MODULES:
        # import_module also binds the submodule on this package, so this runs once per name.
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_MODULES))
