"""The Ray executor: connect to a cluster, share inputs through the object store, run tasks, report.

Everything here leaves scheduling, placement, retries and object transfer to Ray; this module only
decides what a task is and how the results come back in order.

Tasks (`RayExecutor.run_tasks`): a module-level function called once per piece of work (a class, a
partition, a cluster, a shard). Each call is a Ray task with ``max_retries`` (Ray re-runs a task
whose worker process died: killed, out of memory, a lost node); an exception raised by the function
itself is not retried, since running the same deterministic code again gives the same error. The
results come back in submission order whatever order the tasks finish in, so a merge over them is
the same as the one-process loop. A task that still fails cancels the others and raises
`TaskFailed`, whose message names the piece (``label``: e.g. ``"class 3, rows 1200-1599"``); a
`ValueError`, `KeyError` or `TypeError` the function raised (bad input) is raised as that type,
with the same prefix, as the one-process call would raise it.

Shared inputs (`RayExecutor.share`): an object that several tasks read (the selector's inputs, the
k-means centres, a kNN graph) is put once into the object store with ``ray.put`` and handed to the
tasks as a reference; Ray gives each node one copy (NumPy arrays are read zero-copy from shared
memory) instead of pickling it into every task.

Concurrency: at most ``workers`` tasks run at once (default: as many as the cluster's CPUs allow at
``cpus_per_task`` each). Each task gets ``num_cpus=cpus_per_task`` from Ray, which also sets the
task's ``OMP_NUM_THREADS``; torch's intra-op threads follow it (`task_threads`).

Actors (`RayExecutor.actors`): long-lived workers holding a model (the embedding map's). They are
kept for the executor's lifetime (the ``with hp.parallel.ray(...)`` block), so a second map does not
start processes and import torch again (about 5 s an actor, measured on 2 cores); an idle actor keeps
its Ray CPUs (and GPUs) and its interpreter (about 400 MiB with torch). `run_tasks` hands them back
first, since tasks would otherwise wait for CPUs that idle actors hold; so do `release_actors` and the
end of the block.

Progress: one bar for the whole job (rows done, rows/s and the time left), not one per worker.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..ops.checks import check_positive_int
from ..ops.files import cache_root

logger = logging.getLogger(__name__)

__all__ = ["RayExecutor", "TaskFailed", "import_ray", "task_threads", "failure_cause", "progress_bar"]

#: Seconds to wait for a cluster at an explicit ``address`` before `RayExecutor.connect` fails.
CONNECT_TIMEOUT_S = 5
#: What a task raises for bad input; re-raised as the same type (with the piece's name), as in one process.
INPUT_ERRORS = (ValueError, KeyError, TypeError)
#: File formats of the embedding shards (`hf_prune.embed.ray_map`).
SHARD_FORMATS = ("arrow", "parquet")
INSTALL_HINT = "Ray is needed for hp.parallel.ray / --executor ray: `pip install hf_prune[ray]` (or `pip install ray`)"


class TaskFailed(RuntimeError):
    """A task failed after Ray's retries; the message names its piece of work and the cause."""


def import_ray():
    """``import ray`` with an install hint naming the ``ray`` extra."""
    try:
        import ray
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return ray


def task_threads(cpus: float) -> int:
    """Intra-op threads for a task holding ``cpus`` of Ray's CPUs: ``max(1, floor(cpus))``."""
    return max(1, int(math.floor(cpus)))


class RayExecutor:
    """Runs hf_prune's splittable work as Ray tasks (and embedders in Ray actors); see the module docstring.

    Args:
        address: the cluster to join: ``"auto"`` (the one ``ray start`` runs on this machine or
            ``RAY_ADDRESS`` names), ``"ray://host:10001"``, ``"host:6379"``; ``None`` starts a local one
            (or joins the one this process already started).
        workers: most tasks (or embedding actors) at once; default: the cluster's CPUs divided by
            ``cpus_per_task`` (GPUs for actors when ``gpus_per_actor`` is set).
        cpus_per_task: Ray CPUs each task or actor holds (and its torch threads).
        gpus_per_actor: GPUs per embedding actor; default 1 when the cluster has GPUs, else 0 (CPU actors).
        max_retries: times Ray re-runs a task whose worker died (and restarts an actor) before the job fails.
        progress: show one progress bar per job.
        storage: folder for the files tasks write (embedding shards), readable by every node: a shared
            file system path on a multi-node cluster; default ``$HF_PRUNE_CACHE/ray`` (``~/.cache/hf_prune/ray``).
        shard_format: the embedding shards' files: ``"arrow"`` (Arrow IPC streams, the files ``datasets``
            memory-maps: the result reads them in place) or ``"parquet"`` (compressed, for other tools;
            the driver then joins them into one Arrow file). See `hf_prune.embed.ray_map`.
        init_kwargs: more ``ray.init`` arguments (``runtime_env``, ``num_cpus`` for a local cluster, ...).

    Example:
        >>> executor = RayExecutor(address=None, workers=2)
        >>> executor.connect()
        >>> executor.run_tasks(pow, [(2, 3), (3, 2)], labels=["a", "b"])
        [8, 9]
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        cpus_per_task: float = 1,
        gpus_per_actor: float | None = None,
        max_retries: int = 3,
        progress: bool = True,
        storage: str | os.PathLike | None = None,
        shard_format: str = "arrow",
        init_kwargs: dict | None = None,
    ):
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"`address` must be a Ray address such as 'auto' or 'host:6379', or None, got {address!r}")
        if workers is not None:
            check_positive_int("workers", workers)
        if isinstance(cpus_per_task, bool) or not isinstance(cpus_per_task, (int, float)) or cpus_per_task <= 0:
            raise ValueError(f"`cpus_per_task` must be a positive number, got {cpus_per_task!r}")
        if gpus_per_actor is not None and (isinstance(gpus_per_actor, bool) or not gpus_per_actor >= 0):
            raise ValueError(f"`gpus_per_actor` must be a number >= 0, got {gpus_per_actor!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"`max_retries` must be an integer >= 0, got {max_retries!r}")
        if shard_format not in SHARD_FORMATS:
            raise ValueError(f"`shard_format` must be one of {SHARD_FORMATS}, got {shard_format!r}")
        self.address = address
        self.shard_format = shard_format
        self._workers = workers
        self.cpus_per_task = float(cpus_per_task)
        self._gpus_per_actor = gpus_per_actor
        self.max_retries = max_retries
        self.progress = progress
        self.init_kwargs = dict(init_kwargs or {})
        self.storage = Path(storage) if storage is not None else cache_root() / "ray"
        self._ray = None
        self._remote_cache: dict[tuple, Any] = {}
        self._actor_kind: tuple | None = None  # what the live actors were started as (class, resources, args)
        self._actors: list = []

    # ------------------------------------------------------------------ cluster
    def connect(self) -> None:
        """Join (or start) the cluster; an unreachable address is a `ConnectionError` naming it.

        Ray itself would keep retrying an address where nothing listens for minutes (20 attempts of
        about 40 s each in Ray 2.x). With an ``address``, Ray's own settings bound the wait instead:
        one attempt (``RAY_gcs_server_port_wait_time_s``) with a `CONNECT_TIMEOUT_S` connection
        timeout (``RAY_py_gcs_connect_timeout_s``, ``RAY_gcs_rpc_server_connect_timeout_s``), unless
        the environment sets them. The two timeouts are read when Ray is imported, so they apply
        when this is the first import of Ray in the process (a script, the CLI): the error then comes
        in about 10 s; a process that imported Ray before gets Ray's 40 s attempt.
        """
        overrides = {}
        if self.address is not None and "ray" not in sys.modules:
            overrides = {"RAY_py_gcs_connect_timeout_s": str(CONNECT_TIMEOUT_S),
                         "RAY_gcs_rpc_server_connect_timeout_s": str(max(1, CONNECT_TIMEOUT_S // 2))}
        if self.address is not None:
            overrides["RAY_gcs_server_port_wait_time_s"] = "1"
        with _environ_defaults(overrides):
            ray = import_ray()
            self._ray = ray
            if ray.is_initialized():
                return
            kwargs = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True,
                      **self.init_kwargs}
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ConnectionError(
                    f"no Ray cluster at `address`={self.address!r} ({err}); start one with `ray start --head` "
                    "(workers join with `ray start --address <head>:6379`), or pass address=None for a local one"
                ) from err

    @property
    def ray(self):
        if self._ray is None:
            self.connect()
        return self._ray

    def cluster_resources(self) -> dict[str, float]:
        return dict(self.ray.cluster_resources())

    @property
    def workers(self) -> int:
        """Most tasks at once: the ``workers`` given, else the cluster's CPUs over ``cpus_per_task``."""
        if self._workers is not None:
            return self._workers
        cpus = self.cluster_resources().get("CPU", 1.0)
        return max(1, int(cpus // self.cpus_per_task))

    @property
    def gpus_per_actor(self) -> float:
        if self._gpus_per_actor is not None:
            return float(self._gpus_per_actor)
        return 1.0 if self.cluster_resources().get("GPU", 0) > 0 else 0.0

    def record(self, **facts: Any) -> dict[str, Any]:
        """What the provenance keeps of a run on this executor (under the step's ``"executor"``)."""
        resources = self.cluster_resources()
        return {
            "name": self.name,
            "address": self.address,
            "workers": self.workers,
            "cpus_per_task": self.cpus_per_task,
            "max_retries": self.max_retries,
            "nodes": len([node for node in self.ray.nodes() if node.get("Alive")]),
            "cluster_cpus": resources.get("CPU", 0.0),
            "cluster_gpus": resources.get("GPU", 0.0),
            **facts,
        }

    # ------------------------------------------------------------------ objects
    def share(self, value: Any):
        """``ray.put(value)``: one copy in the object store that tasks receive by reference."""
        return self.ray.put(value)

    # ------------------------------------------------------------------ actors
    def actors(self, cls: type, count: int, *args: Any, num_gpus: float = 0) -> list:
        """``count`` actors of ``cls`` (``cls(*args)``), started now or kept from an earlier call.

        Each holds ``num_cpus=cpus_per_task`` and ``num_gpus``; Ray restarts one whose process dies
        (``max_restarts`` and ``max_task_retries`` = ``max_retries``), calling ``cls(*args)`` again, so
        the actor must not depend on state an earlier method call gave it without reloading it. Actors
        of another class, resources or arguments are killed first.
        """
        kind = (cls, self.cpus_per_task, float(num_gpus), self.max_retries, args)
        if kind != self._actor_kind:
            self.release_actors()
            self._actor_kind = kind
        if len(self._actors) < count:
            remote = self.ray.remote(num_cpus=self.cpus_per_task, num_gpus=num_gpus, max_restarts=self.max_retries,
                                     max_task_retries=self.max_retries)(cls)
            self._actors += [remote.remote(*args) for _ in range(count - len(self._actors))]
        return self._actors[:count]

    def release_actors(self) -> None:
        """Kill the kept actors: their CPUs and GPUs go back to the cluster (a no-op when there are none)."""
        actors, self._actors, self._actor_kind = self._actors, [], None
        if actors and self.ray.is_initialized():  # after ray.shutdown() they are gone already
            for actor in actors:
                self.ray.kill(actor, no_restart=True)

    # ------------------------------------------------------------------ tasks
    def _remote(self, fn: Callable, num_cpus: float, num_gpus: float = 0):
        key = (fn, num_cpus, num_gpus, self.max_retries)
        if key not in self._remote_cache:
            self._remote_cache[key] = self.ray.remote(
                num_cpus=num_cpus, num_gpus=num_gpus, max_retries=self.max_retries, retry_exceptions=False
            )(_call_with_threads).options(name=getattr(fn, "__name__", "task"))
        return self._remote_cache[key]

    def run_tasks(
        self,
        fn: Callable,
        calls: Sequence[tuple],
        *,
        labels: Sequence[str],
        rows: Sequence[int] | None = None,
        desc: str = "tasks",
        gpus: float = 0,
    ) -> list[Any]:
        """``[fn(*args) for args in calls]``, each call a Ray task; results in the order of ``calls``.

        ``fn`` must be importable (a module-level function); ``args`` may hold references from `share`,
        which reach ``fn`` as the objects. ``labels`` name the pieces in errors and logs; ``rows``
        (rows per call) drive the progress bar's rows/s and ETA. ``gpus``: GPUs each task holds (Ray
        hides the GPUs from a task that holds none).

        Raises:
            TaskFailed: a call that still failed after ``max_retries`` (worker deaths) or raised; the
                other calls are cancelled and nothing is returned.
            ValueError, KeyError, TypeError: what a call raised for bad input, prefixed with its label.
        """
        if len(labels) != len(calls):
            raise ValueError(f"{len(labels)} labels for {len(calls)} calls")
        rows = [1] * len(calls) if rows is None else [int(r) for r in rows]
        ray = self.ray
        self.release_actors()  # idle actors hold CPUs the tasks need
        remote = self._remote(fn, self.cpus_per_task, gpus)
        threads = task_threads(self.cpus_per_task)
        limit = self.workers
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))[::-1]
        running: dict[Any, int] = {}
        bar = progress_bar(self.progress, total=sum(rows), desc=f"{desc} on Ray")
        started = time.perf_counter()
        try:
            while pending or running:
                while pending and len(running) < limit:
                    i = pending.pop()
                    running[remote.remote(threads, fn, *calls[i])] = i
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    i = running.pop(ref)
                    try:
                        results[i] = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - re-raised with the piece's name
                        raise _failure(err, f"{desc}: {labels[i]}", self.max_retries) from err
                    bar.update(rows[i])
        except BaseException:
            for ref in running:
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()
        logger.info("%s: %d task(s) on Ray in %.2f s (at most %d at once)", desc, len(calls),
                    time.perf_counter() - started, limit)
        return results


@contextlib.contextmanager
def _environ_defaults(values: dict[str, str]):
    """Set the environment variables in ``values`` that are not set already, for the block only."""
    added = [name for name in values if name not in os.environ]
    for name in added:
        os.environ[name] = values[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _call_with_threads(threads: int, fn: Callable, *args):
    """Run ``fn(*args)`` in a Ray worker with torch's intra-op threads set to the task's CPUs."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return fn(*args)


def _failure(err: BaseException, where: str, max_retries: int) -> Exception:
    """The error a failed task ends the job with: `TaskFailed`, or the task's own bad-input error.

    A `ValueError`/`KeyError`/`TypeError` raised by the function is bad input (a budget a class
    cannot meet, a missing column) and is raised again as the same type, its message prefixed with
    ``where``, so callers catch what the one-process call raises.
    """
    cause = getattr(err, "cause", None)
    if isinstance(cause, INPUT_ERRORS) and not isinstance(cause, TaskFailed):
        message = cause.args[0] if isinstance(cause, KeyError) and cause.args else cause
        try:
            return type(cause)(f"{where}: {message}")
        except Exception:  # noqa: BLE001 - an error type with another constructor: TaskFailed below
            pass
    lost = f"its worker was lost on {max_retries + 1} attempt(s)"
    return TaskFailed(f"{where} failed on Ray: {failure_cause(err, lost)}")


def failure_cause(err: BaseException, lost: str) -> str:
    """The original error of a failed Ray task or actor call, in one line: what the function raised,
    or ``lost`` (what Ray's retries could not get past) with Ray's own first line."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):  # RayTaskError: the function itself raised (never retried)
        return f"{type(cause).__name__}: {cause}"
    text = str(err).strip().splitlines()
    # WorkerCrashedError, ActorDiedError, a lost node, ...: Ray already re-ran it `max_retries` times.
    return f"{lost} ({type(err).__name__}: {text[0] if text else ''})"


def progress_bar(enabled: bool, *, total: int, desc: str, initial: int = 0):
    """One tqdm bar in rows for a whole Ray job (off when ``enabled`` is false or ``HF_PRUNE_NO_PROGRESS=1``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="row",
                disable=not enabled or os.environ.get("HF_PRUNE_NO_PROGRESS") == "1")
