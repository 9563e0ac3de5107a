"""The Celery application and how the API enqueues jobs.

One configuration, built from the one `Settings`, for the API (producer) and the worker (consumer):

* Redis (production, CI): `LORASP_BROKER_URL=redis://...`. A task is acknowledged only after it ran
  (`task_acks_late`), a worker holds one message at a time, a message whose worker process died is
  re-queued (`task_reject_on_worker_lost`), and the broker redelivers an unacknowledged message only
  after a visibility timeout longer than the longest job.
* Embedded default: `filesystem://`, a broker that needs no server: messages are files under
  `<home>/broker/`. It cannot redeliver the message of a worker that was killed; `lorasp worker`
  re-enqueues such orphaned jobs when it starts (`worker.app._recover_orphaned_jobs`, which uses
  `lorasp_service.jobs.orphaned_job_ids`; in Redis mode it re-sends running jobs whose lease is dead).

There is no result backend: the database holds the state of every job.

The API sends tasks *by name*, so it never imports worker code (nor torch).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from lorasp_service.settings import Settings

RUN_JOB_TASK = "lorasp.run_job"
# Seconds between a soft time limit (the task fails the job cleanly) and the hard kill.
HARD_TIME_LIMIT_GRACE_SECONDS = 120

log = logging.getLogger(__name__)


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if settings.embedded:
        messages = settings.broker_dir / "messages"
        processed = settings.broker_dir / "processed"
        control = settings.broker_dir / "control"  # exchange tables (kombu's default is ./control)
        for folder in (messages, processed, control):
            folder.mkdir(parents=True, exist_ok=True)
        # One folder is both "in" and "out": producers and consumers are different processes.
        return {
            "data_folder_in": str(messages),
            "data_folder_out": str(messages),
            "processed_folder": str(processed),
            "control_folder": str(control),
            "store_processed": False,
            "polling_interval": 0.5,
        }
    visibility = settings.visibility_timeout_seconds
    options: dict[str, Any] = {"visibility_timeout": visibility}
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Sweep for messages of dead workers often enough for the visibility timeout in use
        # (kombu's default sweep period is ~100 s, which only matters for short timeouts).
        options["unacked_restore_interval"] = max(1, min(10, visibility // 4))
        options["unacked_restore_throttle"] = 1
        if settings.broker_key_prefix:
            options["global_keyprefix"] = settings.broker_key_prefix
    return options


def make_celery(settings: Settings) -> Celery:
    """The Celery app for these settings; producer and worker must build it from the same settings."""
    app = Celery("lorasp", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        result_backend=None,
        task_ignore_result=True,
        task_default_queue=settings.queue_name,
        task_create_missing_queues=True,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        task_soft_time_limit=settings.job_time_limit_seconds,
        task_time_limit=settings.job_time_limit_seconds + HARD_TIME_LIMIT_GRACE_SECONDS,
        # Training holds a lot of memory; a fresh process per job gives it back.
        worker_max_tasks_per_child=1,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


_producers: dict[tuple[str, str, str], Celery] = {}


def _producer(settings: Settings) -> Celery:
    key = (settings.broker_url, str(settings.broker_dir), settings.queue_name)
    app = _producers.get(key)
    if app is None:
        app = _producers[key] = make_celery(settings)
    return app


def enqueue_job(settings: Settings, job_id: str) -> None:
    """Ask a worker to run `job_id`. Call it only after the job row is committed."""
    _producer(settings).send_task(RUN_JOB_TASK, args=[job_id], queue=settings.queue_name)
    log.info("enqueued job %s on queue %s", job_id, settings.queue_name)


def send_task(settings: Settings, name: str, args: list[Any], *, countdown: float | None = None) -> None:
    """Send any task by name on the settings' queue (`countdown`: run it no earlier than that many s)."""
    _producer(settings).send_task(name, args=args, queue=settings.queue_name, countdown=countdown)
