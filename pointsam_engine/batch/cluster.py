"""Running the tasks on Dask distributed: a LocalCluster by default, or an existing scheduler.

A LocalCluster has ``workers`` processes (default: one per core), each running ``threads`` tasks at once
(default: the cores left per worker) with one torch thread per task, so the cores are never oversubscribed;
its scheduler marks a task failed once its worker died twice (``BATCH.allowed_failures``). An existing
scheduler keeps its own settings (``distributed.scheduler.allowed-failures``). The model is loaded once per
worker process (:func:`~.tasks.worker_model`). GPU workers: ``--device auto`` picks a worker's GPU.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..config import BATCH, SegmentConfig
from ..errors import Cancelled, OptionError
from . import tasks
from .assign import Plan, TaskSpec
from .tasks import run_task


def cluster_shape(workers: Optional[int], cores: Optional[int] = None) -> tuple:
    """``(worker processes, threads per worker)`` for a LocalCluster on ``cores`` cores."""
    cores = cores or os.cpu_count() or 1
    n = workers or BATCH.workers or cores
    threads = BATCH.threads_per_worker or max(1, cores // n)
    return n, threads


def start_client(workers: Optional[int], scheduler: Optional[str], worker_log: Optional[Path] = None):
    """A Dask client: on the scheduler at ``scheduler``, or on a new LocalCluster (closed with the client) whose
    workers log into ``worker_log`` (default: the terminal)."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise OptionError(f"cannot reach the Dask scheduler at {scheduler} ({str(exc).splitlines()[0]}); "
                              "start one with `dask scheduler` (and workers with `dask worker ADDRESS`), "
                              "or leave out --scheduler for a local cluster") from None
    n, threads = cluster_shape(workers)
    torch_threads = str(BATCH.torch_threads)
    with dask.config.set({"distributed.scheduler.allowed-failures": BATCH.allowed_failures,
                          "distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": torch_threads,
                          "distributed.nanny.pre-spawn-environ.MKL_NUM_THREADS": torch_threads,
                          f"distributed.nanny.pre-spawn-environ.{tasks.WORKER_LOG_ENV}": str(worker_log or "")}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR, preload=[tasks.__name__])  # tasks.dask_setup
    client = Client(cluster)
    client._pointsam_cluster = cluster  # closed with the client (see close_client)
    return client


def close_client(client) -> None:
    cluster = getattr(client, "_pointsam_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def dashboard(client) -> Optional[str]:
    """The dashboard link, when the scheduler serves one (it needs bokeh)."""
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:
        return None
    return client.dashboard_link if "dashboard" in services else None


def run_on_dask(pending: List[TaskSpec], plan: Plan, cfg: SegmentConfig, work: Path, outcomes: Dict[str, dict], *,
                workers: Optional[int], scheduler: Optional[str], notify: Callable[[float, str], None], cancel,
                echo: Callable[[str], None], total: int) -> None:
    """Run ``pending`` tasks; each outcome (finished or failed) lands in ``outcomes`` as it arrives."""
    from distributed import wait

    client = start_client(workers, scheduler, worker_log=work / BATCH.worker_log)
    futures = {}
    try:
        link = dashboard(client)
        if link:
            echo(f"Dask dashboard: {link}")
        for task in pending:
            clicks = plan.points.loc[list(task.fids)]
            futures[client.submit(run_task, task, clicks, cfg, str(work), key=f"pointsam-{task.id}-{task.key}",
                                  pure=False)] = task
        left = set(futures)
        while left:
            if _cancelled(cancel):
                raise Cancelled("the batch was cancelled; its finished tasks are kept for --resume")
            try:
                done, left = wait(left, timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            for future in done:
                task = futures[future]
                outcomes[task.id] = _outcome(future, task)
                notify(0.02 + 0.9 * len(outcomes) / max(total, 1), f"task {len(outcomes)}/{total}")
    finally:
        unfinished = [f for f in futures if not f.done()]
        with _quiet_scheduler(bool(unfinished)):
            if unfinished:
                client.cancel(unfinished)
            close_client(client)


@contextmanager
def _quiet_scheduler(quiet: bool):
    """While a cancelled batch shuts down, the in-process scheduler logs the results it can no longer gather
    ("Couldn't gather keys"): they are the cancel itself, not an error the user should read."""
    log = logging.getLogger("distributed")
    level = log.level
    if quiet:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _outcome(future, task: TaskSpec) -> dict:
    """A task's result, or its failure in one line (a worker lost twice, a bug on the worker)."""
    from distributed import KilledWorker

    try:
        return future.result()
    except KilledWorker:
        return {"id": task.id, "failed": f"the worker running it was lost {BATCH.allowed_failures + 1} times "
                                         "(killed, or out of memory); run again with --resume to retry it"}
    except Exception as exc:
        return {"id": task.id, "failed": f"internal error on the worker: {type(exc).__name__}: "
                                         f"{str(exc).splitlines()[0] if str(exc) else ''}"}


def _cancelled(cancel) -> bool:
    if cancel is None:
        return False
    return bool(cancel.is_set() if hasattr(cancel, "is_set") else cancel())
