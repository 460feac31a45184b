"""The ``knn_index`` choice of the kNN-based selectors and the record of what their searches measured.

Every selector that searches neighbours (D², ProbCover, TypiClust, the submodular graph selectors)
takes ``knn_index`` ∈ `KNN_INDEXES` (`hf_prune.ops.knn_index`: exact, IVF-Flat, IVF-PQ, HNSW, or
``"auto"`` by N and d, which is exact at up to 50,000 rows per search), runs its searches through a
`KnnLog`, and records what they measured on its provenance step under ``"knn"``, beside (not inside)
the replayable ``params``: the index kind used and its parameters, recall@k (1.0 for exact search, by
definition; measured against exact search on sampled queries otherwise) and seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from datasets import Dataset

from ..ops.checks import check_choice
from ..ops.knn import knn
from ..ops.knn_index import INDEX_KINDS
from ..provenance import with_measurements

__all__ = ["KNN_INDEXES", "check_knn_index", "KnnLog", "with_knn_record"]

KNN_INDEXES = INDEX_KINDS
#: Searches recorded one by one; beyond this only the summary (TypiClust searches once per cluster).
MAX_RECORDED_SEARCHES = 16


def check_knn_index(value: Any) -> str:
    """``value`` when it is one of `KNN_INDEXES`, else a `ValueError` naming ``knn_index``.

    Example:
        >>> check_knn_index("ivf")
        'ivf'
    """
    return check_choice("knn_index", value, KNN_INDEXES)


class KnnLog:
    """Runs `hf_prune.ops.knn.knn` with ``index=knn_index`` and keeps every search's report.

    Example:
        >>> log = KnnLog("auto")
        >>> _, idx = log.search(emb, 10, metric="l2")
        >>> log.record()["recall_at_k_min"]
        1.0
    """

    def __init__(self, knn_index: str, seed: int = 0):
        self.knn_index = check_knn_index(knn_index)
        self.seed = int(seed)
        self.reports: list[dict[str, Any]] = []

    def search(self, x, k: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
        kwargs.setdefault("seed", self.seed)
        values, indices, report = knn(x, k, index=self.knn_index, return_report=True, **kwargs)
        self.reports.append(report)
        return values, indices

    def add(self, report: dict[str, Any]) -> None:
        """Keep the report of a search run elsewhere (e.g. `hf_prune.select.d2_pruning.d2_graph`)."""
        self.reports.append(report)

    def record(self) -> dict[str, Any]:
        """The ``"knn"`` entry of the provenance step: a summary plus the first searches' reports."""
        recalls = [r["recall_at_k"] for r in self.reports]
        return {
            "knn_index": self.knn_index,
            "searches": len(self.reports),
            "indexes_used": sorted({r["index"] for r in self.reports}),
            "recall_at_k_min": min(recalls) if recalls else None,
            "recall_at_k_mean": float(np.mean(recalls)) if recalls else None,
            "recall_measured": any(r["recall_measured"] for r in self.reports),
            "build_s": float(sum(r["build_s"] for r in self.reports)),
            "search_s": float(sum(r["search_s"] for r in self.reports)),
            "recall_s": float(sum(r["recall_s"] for r in self.reports)),
            "reports": self.reports[:MAX_RECORDED_SEARCHES],
        }


def with_knn_record(result: Dataset, log: KnnLog) -> Dataset:
    """``result`` with ``log.record()`` as ``"knn"`` on its last provenance step (measured facts stay
    out of the replayable ``params``).

    Example:
        >>> sub = with_knn_record(sub, log)
        >>> hp.provenance(sub)[-1]["knn"]["indexes_used"]
        ['flat']
    """
    return with_measurements(result, "knn", log.record())
