"""The worker's Celery app: the shared configuration from `lorasp_service.queue`, plus worker hooks.

Run it with `lorasp worker` (or `celery -A worker.app:celery_app worker`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown

from lorasp_service.db import get_engine
from lorasp_service.queue import make_celery
from lorasp_service.recovery import StaleJobSweeper, requeue_orphaned_jobs
from lorasp_service.settings import get_settings
from lorasp_service.work_dirs import sweep_work_dirs

log = logging.getLogger(__name__)

celery_app = make_celery(get_settings())
celery_app.conf.include = ["worker.tasks", "worker.webhooks"]


@worker_init.connect  # type: ignore[untyped-decorator]
def _preload_training_code(**_: Any) -> None:
    # Import torch/transformers once in the parent: every pool process (one per job) forks with them loaded.
    import lorasp_service.training  # noqa: F401


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _fresh_connections_after_fork(**_: Any) -> None:
    # A pool process must not share the parent's database connections.
    get_engine(get_settings()).dispose(close=False)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _recover_orphaned_jobs(**_: Any) -> None:
    """Re-enqueue jobs whose worker was killed, so they resume from their last checkpoint now, and start
    the periodic sweep that does the same for workers that die while this one runs.

    The filesystem broker cannot redeliver a killed worker's message at all, so there queued jobs are
    re-sent too. Redis would redeliver only after the visibility timeout (longer than the longest job),
    so there the running jobs with a dead lease are re-sent at once. Duplicates are harmless: a task
    re-checks the job's state and lease before doing anything. Both run in this (main) process: pool
    processes are forked from it, and a fork copies no threads.
    """
    settings = get_settings()
    sweeper = StaleJobSweeper(settings)
    try:
        requeue_orphaned_jobs(settings, include_queued=settings.embedded, recently_sent=sweeper.recently_sent)
        sweep_work_dirs(settings)
    except Exception as error:  # noqa: BLE001 - a missing schema must not stop the worker
        log.warning("could not look for orphaned jobs: %s", error)
    sweeper.start()
    _sweepers.append(sweeper)


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_sweeps(**_: Any) -> None:
    for sweeper in _sweepers:
        sweeper.stop()


_sweepers: list[StaleJobSweeper] = []  # this worker's sweep thread, stopped at shutdown


import worker.tasks  # noqa: E402,F401 - registers the tasks on celery_app
import worker.webhooks  # noqa: E402,F401 - registers the webhook delivery task
