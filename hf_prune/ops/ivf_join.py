"""IVF self-join: every row's nearest rows among its IVF neighbourhood, by dense products list by list.

A k-NN *graph* (every row a query, the case of D², InfoMax, TypiClust's and ProbCover's searches) asks
an IVF-Flat index for N searches, each scanning the ``nprobe`` lists nearest to one query: N·nprobe
list scans of scattered rows, memory-bound (at 1M × 384, nprobe 16 of 4,000 lists, this took more than
15 minutes on one core). The self-join groups the queries instead: the rows are sorted by the list they
fall in, and the rows of one list are searched together in the ``nprobe`` lists nearest to *that list's*
centroid, as one matrix product (BLAS, compute-bound: 353 s for that 1M-row graph, recall@10 0.9995).
The probes are chosen per list, not per query, so a row near its list's edge may miss a neighbour a
per-query probe would have reached (or find one it would have missed); `hf_prune.ops.knn.knn` measures
the recall either way.

Memory: the candidate table and one list's products at a time, plus the rows sorted by list (one
float32 copy, what IVF-Flat stores too) unless they already lie in one float32 array (a selector's
normalised copy, an in-memory matrix) and the metric is not cosine: then each list's rows are gathered
from that array.
"""

from __future__ import annotations

import numpy as np

from .knn_index import IndexSpec, normalised_block, trained_ivf
from .threads import parallel_steps

__all__ = ["IvfLists", "ivf_list_products", "ivf_self_join", "ivf_self_pairs"]

#: Products held at once (64 MiB of float32): a list's queries are searched in blocks of this size.
_PRODUCTS = 1 << 24


class IvfLists:
    """The rows of ``rows`` sorted into the lists of an IVF-Flat index trained like
    `hf_prune.ops.knn_index.build_index` (same sample, same seed), for list-by-list products.

    The lists are trained and the rows assigned once, so several passes (e.g. a wider ``nprobe`` for
    the rows a first pass left without an answer) reuse them.

    Example:
        >>> lists = IvfLists(as_matrix(x), resolve_spec("ivf", len(x), x.shape[1], 10), "ip")
        >>> for result in lists.products(reduce, nprobe=64, queries=rows_left):
        ...     pass
    """

    def __init__(self, rows, spec: IndexSpec, metric: str, *, seed: int = 0, batch_rows: int = 4096):
        n, d = rows.shape
        self.spec, self.n = spec, n
        cosine = metric == "cosine"
        self.l2 = metric == "l2"
        trained = trained_ivf(rows, spec, metric, seed=seed)
        self.quantizer = trained.quantizer
        self._trained = trained  # owns the quantizer, which must stay referenced
        lists = np.empty(n, dtype=np.int64)
        for start, block in rows.blocks(batch_rows):
            lists[start : start + len(block)] = self.quantizer.search(normalised_block(block, cosine), 1)[1][:, 0]
        self.order = np.argsort(lists, kind="stable")
        self.bounds = np.searchsorted(lists[self.order], np.arange(spec.nlist + 1))
        del lists
        if rows.zero_copy and not cosine:
            # The rows already lie in one array (e.g. a selector's normalised copy): each list's rows are
            # gathered from it, and no second, sorted copy is made.
            source = np.ascontiguousarray(rows.to_numpy(), dtype=np.float32)
            self._take = lambda positions: source[self.order[positions]]
            self.sq = np.einsum("ij,ij->i", source, source)[self.order] if self.l2 else None
        else:
            sorted_rows = np.empty((n, d), dtype=np.float32)
            for lo in range(0, n, batch_rows):
                sorted_rows[lo : lo + batch_rows] = normalised_block(rows.take(self.order[lo : lo + batch_rows]), cosine)
            self._take = lambda positions: sorted_rows[positions]
            self.sq = np.einsum("ij,ij->i", sorted_rows, sorted_rows) if self.l2 else None

    def products(self, reduce, *, nprobe: int | None = None, queries: np.ndarray | None = None,
                 mutual: bool = False):
        """``reduce(queries, candidates, key, query_sq, probes_back)`` per IVF list holding queries (in
        query blocks of at most `_PRODUCTS` values), yielded in list order: the row positions of the
        list's query rows (all its rows, or those among the row positions ``queries``), those of the
        rows in the ``nprobe`` lists (default ``spec.nprobe``) nearest its centroid, and the ``(q, c)``
        table ``‖c‖² − 2q·c`` (``"l2"``; a query's own ``‖q‖²``, ``query_sq``, does not change its
        order) or ``−q·c`` (``"ip"``/``"cosine"``; ``query_sq`` is ``None``), smaller first. With
        ``mutual=True``, ``probes_back`` says per candidate whether its own list probes this list (so
        the pair is also met from the candidate's end); else ``None``. The lists run on the caller's
        threads, each list's products and ``reduce`` on one (`hf_prune.ops.threads.parallel_steps`:
        they are steps of a few million numbers, which a shared CPU would stall at a BLAS barrier)."""
        nlist, bounds, order, take, sq, l2 = self.spec.nlist, self.bounds, self.order, self._take, self.sq, self.l2
        nprobe = self.spec.nprobe if nprobe is None else min(int(nprobe), nlist)
        probes = self.quantizer.search(self.quantizer.reconstruct_n(0, nlist), nprobe)[1]
        # The positions, in the sorted order, of the query rows, and where each list's own begin.
        if queries is None:
            asked = np.arange(self.n)
        else:
            wanted = np.zeros(self.n, dtype=bool)
            wanted[np.asarray(queries, dtype=np.int64)] = True
            asked = np.flatnonzero(wanted[order])
        asked_bounds = np.searchsorted(asked, bounds)
        if mutual:  # which lists probe each list: a CSR of the probe table read backwards
            probing = np.repeat(np.arange(nlist), probes.shape[1])
            targets = probes.reshape(-1)
            by_target = np.argsort(targets, kind="stable")
            probed_by_bounds = np.searchsorted(targets[by_target], np.arange(nlist + 1))
            probed_by = probing[by_target]
            sizes = np.diff(bounds)

        def one_list(lst):
            own = asked[asked_bounds[lst] : asked_bounds[lst + 1]]
            probed = [p for p in probes[lst] if p >= 0 and bounds[p + 1] > bounds[p]]
            candidates = np.concatenate([np.arange(bounds[p], bounds[p + 1]) for p in probed])
            probes_back = None
            if mutual:
                back = np.zeros(nlist, dtype=bool)
                back[probed_by[probed_by_bounds[lst] : probed_by_bounds[lst + 1]]] = True
                probes_back = np.repeat(back[probed], sizes[probed])
            points = take(candidates)
            points_sq = sq[candidates][None] if l2 else None
            found = order[candidates]
            out = []
            # A crowded list (duplicates, a dense mode) is searched in query blocks of at most ~16M products.
            step = max(1, _PRODUCTS // len(candidates))
            for q_lo in range(0, len(own), step):
                block = own[q_lo : q_lo + step]
                key = take(block) @ points.T
                key *= -2.0 if l2 else -1.0  # in place: one table of products at a time
                if l2:
                    key += points_sq
                out.append(reduce(order[block], found, key, (sq[block] if l2 else None), probes_back))
            return out

        for results in parallel_steps(one_list, np.flatnonzero(np.diff(asked_bounds) > 0)):
            yield from results


def ivf_list_products(rows, spec: IndexSpec, metric: str, reduce, *, seed: int, batch_rows: int, mutual: bool = False):
    """`IvfLists.products` of every row with ``spec.nprobe``, the lists trained for this one pass."""
    yield from IvfLists(rows, spec, metric, seed=seed, batch_rows=batch_rows).products(reduce, mutual=mutual)


def ivf_self_join(rows, spec: IndexSpec, metric: str, width: int, *, seed: int = 0, batch_rows: int = 4096):
    """``(values, indices)``, ``(N, width)``: each row's ``width`` best rows (itself included) among the
    rows of the ``spec.nprobe`` lists nearest to its own list's centroid.

    ``rows`` is a block source (`hf_prune.ops.matrix.as_matrix`); ``metric`` ``"l2"`` (squared
    distances, ascending), ``"ip"`` or ``"cosine"`` (similarities, descending; cosine normalises each
    block). The lists are those of an IVF-Flat index trained like `hf_prune.ops.knn_index.build_index`
    (same sample, same seed). A row whose probed lists hold fewer than ``width`` rows gets ``-1``
    entries (the caller searches it again exactly). Equal values go to the lower row position.

    Example:
        >>> spec = resolve_spec("ivf", len(x), x.shape[1], 10)
        >>> values, indices = ivf_self_join(as_matrix(x), spec, "l2", 10)
    """
    n = rows.shape[0]
    l2 = metric == "l2"
    values = np.full((n, width), np.inf if l2 else -np.inf, dtype=np.float32)
    indices = np.full((n, width), -1, dtype=np.int64)

    def best(queries, found, key, query_sq, _):
        take = min(width, len(found))
        if take < len(found):
            picked = np.argpartition(key, take - 1, axis=1)[:, :take]
            key, found = np.take_along_axis(key, picked, axis=1), found[picked]
        else:
            found = np.broadcast_to(found, key.shape)
        # Best first; equal values to the lower row position.
        ranked = np.lexsort((found, key), axis=1)
        best_keys = np.take_along_axis(key, ranked, axis=1)
        return queries, best_keys + query_sq[:, None] if l2 else -best_keys, np.take_along_axis(found, ranked, axis=1)

    for queries, best_values, best_indices in ivf_list_products(rows, spec, metric, best, seed=seed,
                                                             batch_rows=batch_rows):
        values[queries, : best_values.shape[1]] = best_values
        indices[queries, : best_indices.shape[1]] = best_indices
    return values, indices


def ivf_self_pairs(rows, spec: IndexSpec, threshold: float, *, seed: int = 0, batch_rows: int = 4096,
                   once: bool = False):
    """Per IVF list (or block of its rows), ``(queries, rows, cols, squared distances)``: its number of
    rows and its pairs closer than ``sqrt(threshold)`` among the rows of the ``spec.nprobe`` lists nearest
    that list's centroid (self-pairs included).

    A radius search of every row, list by list as `ivf_self_join` (``"l2"`` on ``rows`` as given):
    what `hf_prune.ops.knn.radius_neighbors` runs for ``index="ivf"``. Pairs come grouped by list, not
    in row order; each is found from its first row's list (the caller symmetrises). A pair whose two
    lists probe each other is met from both ends; ``once=True`` keeps it only from the end with the
    lower row (``rows < cols``), so each unordered pair the join finds comes once, and self-pairs once.
    That holds as long as the test against ``threshold`` agrees from both ends, which a caller that
    re-decides the pairs near it in higher precision ensures.

    Example:
        >>> for _, r, c, sq in ivf_self_pairs(as_matrix(x), resolve_spec("ivf", len(x), x.shape[1], 1), 0.25):
        ...     pass
    """
    def pairs(queries, found, key, query_sq, back):
        key += query_sq[:, None]
        q, c = np.nonzero(key < threshold)
        r, col, sq = queries[q], found[c], key[q, c]
        if once:  # the other end finds it too: keep it from the lower row's end only
            keep = ~back[c] | (r <= col)
            r, col, sq = r[keep], col[keep], sq[keep]
        return len(queries), r, col, sq

    yield from ivf_list_products(rows, spec, "l2", pairs, seed=seed, batch_rows=batch_rows, mutual=once)
