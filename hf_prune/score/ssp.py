"""SSP: self-supervised prototype distance (Sorscher et al., 2022), as a score column.

k-means is fitted on an embedding column (typically self-supervised features, e.g. DINO/DINOv2
from `hp.embed.ImageEmbedder`), globally or inside each class; a sample's score is its distance to
the nearest centroid ("prototype"). Larger = less prototypical = harder; Sorscher et al. keep the
hardest samples when data is plentiful and the easiest when it is scarce, and InfoMax uses this
score as its unsupervised intra-sample information I(z) (InfoMax seed, Sec. 4).
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from ..ops.checks import check_choice, check_positive_int, seed_int
from ..ops.columns import add_column, check_columns, check_new_column, class_groups, read_matrix
from ..ops.deprecation import renamed_value
from ..ops.kmeans import kmeans
from ..provenance import with_provenance

__all__ = ["ssp"]


def ssp(
    dataset: Dataset,
    *,
    embedding_column: str = "emb",
    n_clusters: int,
    label_column: str | None = None,
    output_column: str = "ssp",
    metric: str = "l2",
    iterations: int = 25,
    seed: int | np.random.Generator = 0,
    overwrite: bool = False,
    backend: str = "auto",
    train_size: int | None = None,
) -> Dataset:
    """Add the distance of each row to its nearest k-means centroid as a float32 column.

    Args:
        dataset: the input (not modified); only ``embedding_column`` (and labels) is read.
        embedding_column: fixed-length float embeddings.
        n_clusters: clusters per k-means (per class when ``label_column`` is given); must be smaller
            than the number of rows clustered (a cluster per row makes every distance 0).
        label_column: cluster each class separately (prototypes of the class), else one global k-means.
        output_column: the score column to write.
        metric: ``"l2"``: k-means on the embeddings and the Euclidean (not squared) distance
            to the nearest centroid; ``"cosine"``: spherical k-means on L2-normalised embeddings and
            the cosine distance ``1 - cos`` to the nearest (unit) centroid, Sorscher et al.'s setting.
            The seeds only say "distance to the cluster center", so ``"l2"`` is the default.
            ``"euclidean"``, the spelling of hf_prune 0.1.0, still means ``"l2"`` (with a
            `FutureWarning`) for one release.
        iterations: the exact number of Lloyd iterations (faiss's ``niter``: neither backend stops
            early on convergence, so this is a count, not a ``max_iter`` cap).
        seed: k-means seed, an integer ≥ 0 or a NumPy Generator (one draw from it gives the integer,
            `hf_prune.ops.checks.seed_int`, which the ``"score.ssp"`` provenance step records); per
            class it is derived from that integer and the class's position in the sorted class order.
        overwrite: replace an existing ``output_column``.
        backend: `hf_prune.ops.kmeans.kmeans`'s: ``"auto"`` (faiss itself on a GPU it can use, its
            algorithm as parallel row-block steps elsewhere), ``"faiss"`` or ``"torch"``.
        train_size: rows (per k-means) the centroids are trained on, a seeded sample
            (`hf_prune.ops.kmeans.kmeans`: default ``max(256·n_clusters, 65,536)``; every row of a
            smaller group); every row is then scored against the centroids.

    Example:
        >>> ds = hp.score.ssp(ds, embedding_column="emb", n_clusters=100, output_column="ssp")
        >>> sub = hp.select.infomax(ds, fraction=0.1, score_column="ssp", embedding_column="emb")
    """
    metric = renamed_value("ssp", "metric", metric, {"euclidean": "l2"})
    check_choice("metric", metric, ("l2", "cosine"))
    n_clusters = check_positive_int("n_clusters", n_clusters)
    if train_size is not None:
        train_size = check_positive_int("train_size", train_size)
    iterations = check_positive_int("iterations", iterations)
    seed = seed_int(seed)
    check_columns(dataset, embedding_column, label_column)
    check_new_column(dataset, output_column, overwrite)
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    x = read_matrix(dataset, embedding_column)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError(f"column {embedding_column!r} has a zero vector (row {int(np.argmin(norms))}); cosine is undefined")
        x = (x / norms).astype(np.float32)
    scores = np.empty(len(x), dtype=np.float32)
    for index, (code, rows) in enumerate(zip(*class_groups(dataset, label_column))):
        where = "the dataset" if code is None else f"class {code} of {label_column!r}"
        if n_clusters >= len(rows):
            raise ValueError(f"`n_clusters`={n_clusters} must be smaller than the number of rows in {where} ({len(rows)})")
        group_seed = seed if code is None else int(np.random.default_rng([seed, index]).integers(2**31 - 1))
        centroids, assign, _ = kmeans(x[rows], n_clusters, iterations=iterations, seed=group_seed,
                                      spherical=metric == "cosine", backend=backend, train_size=train_size)
        scores[rows] = _distance_to_assigned(x, rows, centroids.astype(np.float64), assign, metric)
    result = add_column(dataset, output_column, scores, overwrite=overwrite)
    params = {"embedding_column": embedding_column, "n_clusters": n_clusters, "label_column": label_column,
              "metric": metric, "iterations": iterations, "seed": seed, "backend": backend, "train_size": train_size,
              "output_column": output_column}
    return with_provenance(result, dataset, method="score.ssp", params=params)


def _distance_to_assigned(x, rows, centroids, assign, metric, chunk: int = 65536) -> np.ndarray:
    """Distances recomputed from differences in float64: the ||x||² - 2x·c + ||c||² expansion
    used for the assignment loses digits in float32 when embeddings are far from the origin."""
    out = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), chunk):
        xs = x[rows[start : start + chunk]].astype(np.float64)
        cs = centroids[assign[start : start + chunk]]
        if metric == "cosine":
            out[start : start + chunk] = 1.0 - (xs * cs).sum(1) / np.maximum(np.linalg.norm(cs, axis=1), 1e-12)
        else:
            out[start : start + chunk] = np.linalg.norm(xs - cs, axis=1)
    return np.maximum(out, 0.0)
