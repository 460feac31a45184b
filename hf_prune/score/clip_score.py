"""CLIP score from two embedding columns: the cosine similarity of each image–text pair."""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from ..ops.columns import add_column, check_columns, check_new_column, iter_matrix

__all__ = ["clip_score"]


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
    `hp.embed.CLIPEmbedder` writes the same score directly while embedding.

    Example:
        >>> ds = hp.score.clip_score(ds, image_embedding_column="image_emb", text_embedding_column="text_emb")
    """
    check_columns(dataset, image_embedding_column, text_embedding_column)
    check_new_column(dataset, output_column, overwrite)
    scores = np.empty(len(dataset), dtype=np.float32)
    image_chunks = iter_matrix(dataset, image_embedding_column, batch_size=batch_size)
    text_chunks = iter_matrix(dataset, text_embedding_column, batch_size=batch_size)
    for (start, image), (_, text) in zip(image_chunks, text_chunks):
        if image.shape[1] != text.shape[1]:
            raise ValueError(
                f"columns {image_embedding_column!r} ({image.shape[1]}-d) and {text_embedding_column!r} "
                f"({text.shape[1]}-d) must have the same width"
            )
        image, text = image.astype(np.float64), text.astype(np.float64)
        norms = {}
        for name, x in ((image_embedding_column, image), (text_embedding_column, text)):
            norms[name] = np.linalg.norm(x, axis=1)
            if (norms[name] == 0).any():
                raise ValueError(f"column {name!r} has a zero vector (row {start + int(np.argmin(norms[name]))}); its cosine is undefined")
        scores[start : start + len(image)] = (image * text).sum(1) / (norms[image_embedding_column] * norms[text_embedding_column])
    return add_column(dataset, output_column, scores, overwrite=overwrite)
