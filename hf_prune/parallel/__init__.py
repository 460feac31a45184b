"""Run hf_prune's data-parallel work on a Ray cluster: one switch around the calls users already make.

Inside ``with hp.parallel.ray(...)`` the functions that split their work send the pieces to Ray
instead of running them in this process; outside it nothing changes and nothing imports Ray::

    import hf_prune as hp

    with hp.parallel.ray(address="auto", max_retries=3):      # a running cluster (`ray start --head`)
        ds = hp.embed.ImageEmbedder(model, processor=proc).map(ds)   # actor pool, Arrow shards
        sub = hp.select.infomax(ds, fraction=0.1, score_column="el2n", partitions=10)  # one task a part

``address=None`` starts a local cluster in this process (``ray.init()``), the way tests run it.
What splits, what does not, and how the merged result equals the one-process call are described
in the modules that do the splitting (`hf_prune.select._core` for per-class groups, InfoMax's
partitions, SemDeDup's clusters, CCS's strata) and in `hf_prune.parallel.ray_executor`.

The CLI has the same switch: ``hf-prune run pipeline.yaml --executor ray --address auto``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Ray is an optional extra: import it only when a Ray executor is used
    from .ray_executor import RayExecutor

__all__ = ["ray", "current_executor", "EXECUTORS"]

EXECUTORS = ("local", "ray")

_CURRENT: contextvars.ContextVar[RayExecutor | None] = contextvars.ContextVar("hf_prune_executor", default=None)


def current_executor() -> RayExecutor | None:
    """The executor of the innermost ``hp.parallel.ray(...)`` block, or ``None`` (run in this process).

    Example:
        >>> hp.parallel.current_executor() is None
        True
    """
    return _CURRENT.get()


@contextlib.contextmanager
def ray(
    address: str | None = None,
    *,
    workers: int | None = None,
    cpus_per_task: float = 1,
    gpus_per_actor: float | None = None,
    max_retries: int = 3,
    progress: bool = True,
    storage: str | None = None,
    shard_format: str = "arrow",
    init_kwargs: dict | None = None,
) -> Iterator[RayExecutor]:
    """Run the work inside the block on Ray; see `hf_prune.parallel.ray_executor.RayExecutor` for the options.

    Connects before the block starts (an unreachable ``address`` fails here, before any work) and
    leaves a cluster it started itself running until the interpreter exits, as ``ray.init`` does,
    so that several blocks share one. The embedding actors the block started are killed when it ends.

    Example:
        >>> with hp.parallel.ray(address="auto", workers=2) as executor:
        ...     sub = hp.select.gm_matching(ds, fraction=0.1, embedding_column="emb", label_column="label")
        >>> hp.provenance(sub)[-1]["executor"]["name"]
        'ray'
    """
    from .ray_executor import RayExecutor

    executor = RayExecutor(
        address=address, workers=workers, cpus_per_task=cpus_per_task, gpus_per_actor=gpus_per_actor,
        max_retries=max_retries, progress=progress, storage=storage, shard_format=shard_format,
        init_kwargs=init_kwargs,
    )
    executor.connect()
    token = _CURRENT.set(executor)
    try:
        yield executor
    finally:
        _CURRENT.reset(token)
        executor.release_actors()
