"""The worker's Celery app: the shared configuration from `lorasp_service.queue`, plus worker hooks.

Run it with `lorasp worker` (or `celery -A worker.app:celery_app worker`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_ready

from lorasp_service.db import get_engine
from lorasp_service.queue import enqueue_job, make_celery
from lorasp_service.settings import get_settings

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
    """Re-enqueue jobs whose worker was killed, so they resume from their last checkpoint now.

    The filesystem broker cannot redeliver a killed worker's message at all, so there queued jobs are
    re-sent too. Redis would redeliver only after the visibility timeout (longer than the longest job),
    so there the running jobs with a dead lease are re-sent at once. Duplicates are harmless: a task
    re-checks the job's state and lease before doing anything.
    """
    settings = get_settings()
    from lorasp_service.jobs import orphaned_job_ids

    try:
        job_ids = orphaned_job_ids(settings, include_queued=settings.embedded)
    except Exception as error:  # noqa: BLE001 - a missing schema must not stop the worker
        log.warning("could not look for orphaned jobs: %s", error)
        return
    for job_id in job_ids:
        log.info("re-enqueuing orphaned job %s", job_id)
        enqueue_job(settings, job_id)


import worker.tasks  # noqa: E402,F401 - registers the tasks on celery_app
import worker.webhooks  # noqa: E402,F401 - registers the webhook delivery task
