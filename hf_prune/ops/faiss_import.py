"""Lazy faiss import with an install hint (faiss-cpu by default, the ``gpu`` extra for faiss-gpu)."""

from __future__ import annotations

__all__ = ["import_faiss", "faiss_available"]


def import_faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "faiss is needed for this operation: `pip install faiss-cpu`, or `pip install hf_prune[gpu]` for faiss-gpu"
        ) from err
    return faiss


def faiss_available() -> bool:
    try:
        import_faiss()
    except ImportError:
        return False
    return True
