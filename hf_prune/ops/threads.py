"""Thread policy for loops of many small steps (the greedy selectors' one-pass-per-pick loops).

A greedy selector runs thousands of steps, each a matrix–vector product over the rows plus a few
O(N) vector operations. torch and OpenBLAS split each such operation over their intra-op threads;
on a CPU shared with other work, every step then waits at a barrier for a thread that has been
descheduled, and a loop of small steps collapses. Measured on the 2-core development machine
(torch 2.13 CPU, OpenBLAS 0.3.31), milliseconds per pick with 1 vs 2 threads:

=====================  ====================  ===========================
per-step rows × dim    idle machine (1 / 2)  one busy BLAS process (1 / 2)
=====================  ====================  ===========================
2,000 × 64 (0.5 MB)    k-center 0.06 / 0.05  k-center 0.04 / 0.18 (4.5×)
                       Gram–Schmidt 0.22 / 0.18  Gram–Schmidt 0.16 / 1.25 (7.8×)
20,000 × 384 (31 MB)   k-center 5.1 / 4.6    k-center 4.8 / 4.8
                       Gram–Schmidt 4.9 / 4.8    Gram–Schmidt 4.2 / 11.0 (2.6×)
100,000 × 384 (154 MB) k-center 30 / 23      k-center 27 / 41 (1.5×)
=====================  ====================  ===========================

So one thread never loses much on small steps and often wins by a large factor; on large steps
(a pass over more than a few million numbers) the extra threads pay off on an idle machine and the
caller's setting is kept. **Rule:** an operation of fewer than `SMALL_STEP_WORK` numbers
(``2**22``, 16 MiB of float32) runs on one thread; larger ones on the threads the caller set. A
greedy step has two kinds: the product over the N×d rows, which runs in NumPy's BLAS (limited when
``N·d`` is small), and O(N) bookkeeping in torch (limited when ``N`` is small, i.e. up to ~4M rows:
a 100,000-row vector operation gains nothing from a second thread and stalls at its barrier under
load). The previous settings are restored when the loop ends, also on an error. Callers on a shared
machine who want one thread for the large products too set ``OMP_NUM_THREADS=1`` themselves, as the
tests do.

Loops whose steps do not depend on each other (the IVF join's lists, TypiClust's and SemDeDup's
clusters, the row blocks of one k-means++ pass) take the other way round: `parallel_steps` runs whole
steps on the caller's threads, each step on one thread, so the cores stay busy without a barrier per
product (beside a competing job: TypiClust at 100k × 384 193.7 → 59.7 s, D² 42.9 → 24.5 s, the same
rows; `recipes/benchmarks/RESULTS.md`).

`thread_policy(False)` switches both rules off (the threads stay at torch's and OpenBLAS's defaults),
e.g. to measure what it buys (``recipes/benchmarks/greedy_under_load.py``).
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import torch
from threadpoolctl import ThreadpoolController

from .checks import check_bool

__all__ = [
    "SMALL_STEP_WORK", "held_threads", "loop_threads", "parallel_steps", "small_step_threads", "step_pool",
    "step_threads", "SMALL_LOOP_WORK",
    "thread_policy", "thread_policy_enabled",
]

# Numbers read per step below which a loop runs on one thread (see the table in the module docstring).
SMALL_STEP_WORK = 1 << 22

_state = threading.local()


def thread_policy_enabled() -> bool:
    """Whether `small_step_threads` applies the rule (``True`` unless inside ``thread_policy(False)``).

    Example:
        >>> thread_policy_enabled()
        True
    """
    return getattr(_state, "enabled", True)


@contextmanager
def thread_policy(enabled: bool) -> Iterator[None]:
    """Switch the small-step rule on or off inside the block (in this Python thread); restored after.

    Example:
        >>> with thread_policy(False):  # torch's default threads, e.g. to measure the policy
        ...     sub = hp.select.k_center_greedy(ds, size=100)
    """
    check_bool("enabled", enabled)
    previous = thread_policy_enabled()
    _state.enabled = bool(enabled)
    try:
        yield
    finally:
        _state.enabled = previous


def loop_threads(step_work: int, device: str | torch.device | None = "cpu") -> int | None:
    """The torch thread count for a loop whose steps each read ``step_work`` numbers.

    ``1`` for a small CPU step (below `SMALL_STEP_WORK`) while the policy is on; ``None`` (leave the
    caller's setting) for large steps, for loops that run on another device, and with the policy off.

    Example:
        >>> loop_threads(2000 * 64)
        1
        >>> loop_threads(1_000_000 * 384) is None
        True
    """
    if isinstance(step_work, bool) or not isinstance(step_work, int) or step_work < 0:
        raise ValueError(f"`step_work` must be a non-negative int, got {step_work!r}")
    if device is not None and torch.device(device).type != "cpu":
        return None
    if not thread_policy_enabled() or step_work >= SMALL_STEP_WORK:
        return None
    return 1


@contextmanager
def small_step_threads(
    step_work: int, device: str | torch.device | None = "cpu", *, vector_work: int | None = None,
) -> Iterator[int]:
    """Run the block with the threads `loop_threads` picks; yields the torch thread count inside it.

    ``step_work`` (numbers one step's matrix–vector product reads) sets the BLAS / OpenMP pools
    NumPy uses (through threadpoolctl); ``vector_work`` (the length of the step's torch vector
    operations, default ``step_work``) sets torch's intra-op threads. The greedy loops pass ``N·d``
    and ``N``: their product runs in NumPy's BLAS, their O(N) bookkeeping in torch, and an O(N)
    operation is small long before the product is. The previous settings come back when the block
    ends, also on an error.

    Example:
        >>> with small_step_threads(len(x) * x.shape[1], vector_work=len(x)):
        ...     picks = [greedy_step(x) for _ in range(k)]
    """
    blas_threads = loop_threads(step_work, device)
    torch_threads = blas_threads if vector_work is None else loop_threads(vector_work, device)
    previous = torch.get_num_threads()
    limited = nullcontext()
    if blas_threads is not None:
        blas = _blas_controller()
        # Only pools above the limit are touched: limiting costs a call into each library.
        if any(lib.num_threads > blas_threads for lib in blas.lib_controllers):
            limited = blas.limit(limits=blas_threads)
    change = torch_threads is not None and torch_threads != previous
    if change:
        torch.set_num_threads(torch_threads)
    try:
        with limited:
            yield torch.get_num_threads()
    finally:
        if change:
            torch.set_num_threads(previous)


_controller: ThreadpoolController | None = None


_controller_modules = 0


def _blas_controller() -> ThreadpoolController:
    """The BLAS / OpenMP pools loaded in this process, found again only after new imports.

    Discovery takes milliseconds, so a selection of many tiny classes must not pay it per class; but a
    module imported since (scipy, faiss, a model library) can bring its own BLAS or OpenMP pool, which a
    controller found before it would leave unlimited."""
    global _controller, _controller_modules
    if _controller is None or len(sys.modules) != _controller_modules:
        _controller = ThreadpoolController()
        _controller_modules = len(sys.modules)
    return _controller


@contextmanager
def held_threads(threads: int) -> Iterator[None]:
    """Hold torch, the BLAS/OpenMP pools and faiss (when installed) to ``threads`` inside the block.

    For a whole job run on a given number of cores (a benchmark's one-thread baseline, a demo sharing
    its machine); the previous settings come back after the block, also on an error. Pools loaded
    inside the block are not reached (threadpoolctl limits the loaded ones), so faiss is loaded first.

    Example:
        >>> with held_threads(1):
        ...     sub = hp.select.infomax(ds, fraction=0.1, partitions=10)
    """
    from threadpoolctl import threadpool_limits

    from .faiss_import import faiss_available, import_faiss

    faiss = import_faiss() if faiss_available() else None
    before = torch.get_num_threads()
    faiss_before = faiss.omp_get_max_threads() if faiss is not None else None
    torch.set_num_threads(threads)
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)
        if faiss is not None:
            faiss.omp_set_num_threads(faiss_before)  # faiss's own count, which need not be torch's


def parallel_steps(step: Callable, items: Iterable, *, threads: int | None = None) -> Iterator:
    """``step(item)`` for each item, yielded in order, run on ``threads`` Python threads (default:
    torch's intra-op thread count) while torch, the BLAS pools and faiss are held to one thread.

    For loops of many independent medium steps (the IVF join's lists, one matrix product of a few
    million numbers each). Letting BLAS split every such product over the cores makes each step wait
    at a barrier for its other thread, and with a competing job on the cores that thread is often
    descheduled. The k-NN graph of 100,000 × 384 rows through the join took 8.5 s on two BLAS threads
    and 11.7 s on one with the machine to itself, but 27.4 s and 13.9 s beside a 2-thread BLAS job
    (15.7 s on two threads this way). Here each worker runs whole steps on one thread, so a
    descheduled worker delays only its own step. NumPy's products and sorts release the GIL, so the
    workers run in parallel. At most ``2 × threads`` steps are pending at a time (their results are
    held until yielded). With one thread, or inside ``thread_policy(False)``, the steps run here, one
    after the other, with the caller's settings. `step_pool` keeps the workers for many such loops.

    Example:
        >>> for table in parallel_steps(lambda lst: rows[lst] @ rows.T, lists):
        ...     consume(table)
    """
    with step_pool(threads) as run:
        yield from run(step, items)


#: Below this many multiply-adds in a whole loop (about a millisecond on one core), starting workers
#: costs more than they save: `step_threads` runs such a loop's steps in the caller.
SMALL_LOOP_WORK = 1 << 26


def step_threads(device: str | torch.device | None = "cpu", work: int | None = None) -> int | None:
    """The ``threads`` for `parallel_steps` / `step_pool` on ``device`` (as `hf_prune.ops.device.resolve_device`
    reads it): ``None`` (torch's thread count) on
    the CPU, ``1`` (the steps run in the caller, one after the other) on another device, whose one
    stream Python threads would not feed faster, and for a loop of fewer than `SMALL_LOOP_WORK`
    multiply-adds in all (``work``, when given).

    Example:
        >>> step_threads("cpu"), step_threads("cuda"), step_threads("cpu", work=1000)
        (None, 1, 1)
    """
    from .device import resolve_device

    on_cpu = resolve_device(device).type == "cpu"
    return None if on_cpu and (work is None or work >= SMALL_LOOP_WORK) else 1


@contextmanager
def step_pool(threads: int | None = None) -> Iterator[Callable[[Callable, Iterable], Iterator]]:
    """Workers for many `parallel_steps` loops: yields ``run(step, items)``, which runs one loop on them.

    Holding the threads and starting the workers cost milliseconds, so a loop repeated thousands of
    times (a pass over the rows per k-means++ seed) enters this once.

    Example:
        >>> with step_pool() as run:
        ...     for seed in range(k):
        ...         parts = list(run(lambda lo: x[lo : lo + 4096] @ centre, range(0, len(x), 4096)))
    """
    threads = torch.get_num_threads() if threads is None else threads
    if threads <= 1 or not thread_policy_enabled():
        yield map
        return
    with held_threads(1), ThreadPoolExecutor(max_workers=threads, initializer=_one_thread_here) as pool:

        def run(step: Callable, items: Iterable) -> Iterator:
            pending: deque = deque()
            for item in items:
                pending.append(pool.submit(step, item))
                if len(pending) >= 2 * threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

        yield run


def _one_thread_here() -> None:
    """Hold this (new) thread's OpenMP pools to one thread: OpenMP's thread count is set per calling
    thread, so `held_threads` in the caller does not reach a worker's faiss or OpenMP-built BLAS."""
    from .faiss_import import faiss_available, import_faiss

    if faiss_available():
        import_faiss().omp_set_num_threads(1)
    _blas_controller().limit(limits=1)  # not restored: it lasts as long as the worker thread
