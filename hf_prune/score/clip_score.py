"""CLIP score from two embedding columns: the cosine similarity of each image–text pair."""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from ..ops.columns import add_column, check_columns, check_new_column, iter_matrix
from ..provenance import with_provenance

__all__ = ["clip_score", "pair_cosine"]


def pair_cosine(
    image: np.ndarray,
    text: np.ndarray,
    *,
    image_column: str = "image_emb",
    text_column: str = "text_emb",
    start: int = 0,
) -> np.ndarray:
    """``cos(image_i, text_i)`` of two ``(n, d)`` arrays as ``(n,)`` float32, computed in float64.

    The one CLIP-score computation: `clip_score` runs it on stored embedding columns and
    `hf_prune.embed.CLIPEmbedder` on the two embeddings it is about to store, so both routes give
    the same float32 values. A zero-norm row raises `ValueError` naming its column and row
    (``start`` + its position, for messages about a chunk of a larger column), as does a width mismatch.

    Example:
        >>> pair_cosine(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]])).round(4)
        array([0.7071], dtype=float32)
    """
    if image.shape[1] != text.shape[1]:
        raise ValueError(
            f"columns {image_column!r} ({image.shape[1]}-d) and {text_column!r} ({text.shape[1]}-d) must have the same width"
        )
    image, text = image.astype(np.float64), text.astype(np.float64)
    norms = []
    for name, x in ((image_column, image), (text_column, text)):
        norm = np.linalg.norm(x, axis=1)
        if (norm == 0).any():
            raise ValueError(f"column {name!r} has a zero vector (row {start + int(np.argmin(norm))}); its cosine is undefined")
        norms.append(norm)
    return ((image * text).sum(1) / (norms[0] * norms[1])).astype(np.float32)


def clip_score(
    dataset: Dataset,
    *,
    image_embedding_column: str = "image_emb",
    text_embedding_column: str = "text_emb",
    output_column: str = "clip_score",
    overwrite: bool = False,
    batch_size: int = 65536,
) -> Dataset:
    """Add ``cos(image_emb_i, text_emb_i)`` as a float32 column (streamed in ``batch_size`` chunks).

    This is the score used for CLIP-score filtering (e.g. DataComp); Hessel et al.'s CLIPScore is
    ``2.5 * max(cos, 0)``. The cosine of a zero vector is undefined, so a zero-norm row raises
    `ValueError` naming its column and row, as do width mismatches and NaN/inf rows.
    `hp.embed.CLIPEmbedder` writes the same values (`pair_cosine` of its two outputs) while
    embedding. Records a ``"score.clip_score"`` provenance step.

    Example:
        >>> ds = hp.score.clip_score(ds, image_embedding_column="image_emb", text_embedding_column="text_emb")
    """
    check_columns(dataset, image_embedding_column, text_embedding_column)
    check_new_column(dataset, output_column, overwrite)
    scores = np.empty(len(dataset), dtype=np.float32)
    image_chunks = iter_matrix(dataset, image_embedding_column, batch_size=batch_size)
    text_chunks = iter_matrix(dataset, text_embedding_column, batch_size=batch_size)
    for (start, image), (_, text) in zip(image_chunks, text_chunks):
        scores[start : start + len(image)] = pair_cosine(
            image, text, image_column=image_embedding_column, text_column=text_embedding_column, start=start
        )
    result = add_column(dataset, output_column, scores, overwrite=overwrite)
    params = {"image_embedding_column": image_embedding_column, "text_embedding_column": text_embedding_column,
              "output_column": output_column}
    return with_provenance(result, dataset, method="score.clip_score", params=params)
