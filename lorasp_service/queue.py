"""The Celery application and how the API enqueues jobs.

One configuration, built from the one `Settings`, for the API (producer) and the worker (consumer):

* Redis (production, CI): `LORASP_BROKER_URL=redis://...`. A task is acknowledged only after it ran
  (`task_acks_late`), a worker holds one message at a time, a message whose worker process died is
  re-queued (`task_reject_on_worker_lost`), and the broker redelivers an unacknowledged message only
  after a visibility timeout longer than the longest job.
* Embedded default: `filesystem://`, a broker that needs no server: messages are files under
  `<home>/broker/`. It cannot redeliver the message of a worker that was killed; `lorasp worker`
  re-enqueues such orphaned jobs when it starts, and every worker re-sends running jobs whose lease is
  dead periodically, in both modes (`lorasp_service.recovery`, which uses
  `lorasp_service.jobs.orphaned_job_ids`).

A job resumed after its worker died goes to a second queue, `<queue_name>.resume`, that every worker
consumes *before* the main one (Redis: `queue_order_strategy="priority"`; the filesystem broker: a
channel that polls its queues in the listed order, below), so an interrupted job runs before jobs that
never started instead of rejoining the back of the queue.

There is no result backend: the database holds the state of every job.

The API sends tasks *by name*, so it never imports worker code (nor torch).
"""

from __future__ import annotations

import logging
from queue import Empty
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue
from kombu.transport import filesystem
from kombu.utils.scheduling import FairCycle

from lorasp_service.settings import DEFAULT_RESOURCE_CLASS, Settings

RUN_JOB_TASK = "lorasp.run_job"
# Seconds between a soft time limit (the task fails the job cleanly) and the hard kill.
HARD_TIME_LIMIT_GRACE_SECONDS = 120

log = logging.getLogger(__name__)


def job_queue_name(settings: Settings, resource_class: str | None = None) -> str:
    """The queue of a resource class's jobs: `queue_name` for "default" (None), else `<queue_name>.<c>`."""
    if resource_class is None or resource_class == DEFAULT_RESOURCE_CLASS:
        return settings.queue_name
    return f"{settings.queue_name}.{resource_class}"


def resume_queue_name(settings: Settings, resource_class: str | None = None) -> str:
    """The queue of jobs resumed after their worker died: consumed before the class's main queue."""
    return f"{job_queue_name(settings, resource_class)}.resume"


def service_queue_name(settings: Settings) -> str:
    """Short tasks any worker runs (webhook deliveries), whatever its resource classes."""
    return f"{settings.queue_name}.service"


def worker_queue_names(settings: Settings) -> list[str]:
    """What a worker consumes, in priority order: the service queue (short tasks), every resume queue
    of its classes, then their main ones."""
    classes = settings.worker_classes
    resumes = [resume_queue_name(settings, c) for c in classes]
    return [service_queue_name(settings), *resumes, *(job_queue_name(settings, c) for c in classes)]


class _ListedOrderCycle(FairCycle):
    """Poll the queues in the order the worker listed them, starting from the first every time.

    kombu's FairCycle resumes after the queue it last read (round robin): the resume queue would then
    wait behind a message of the main queue every other poll.
    """

    def get(self, callback: Any, **kwargs: Any) -> Any:
        self.pos = 0
        return super().get(callback, **kwargs)  # type: ignore[no-untyped-call]


class _InOrderFilesystemChannel(filesystem.Channel):
    def _reset_cycle(self) -> None:
        cycle = _ListedOrderCycle(self._get_and_deliver, self._active_queues, Empty)  # type: ignore[no-untyped-call]
        self._cycle = cycle


class InOrderFilesystemTransport(filesystem.Transport):
    """kombu's filesystem transport, but queues are read in priority (listed) order."""

    Channel = _InOrderFilesystemChannel


def _direct_queue(name: str) -> Queue:
    # Its own exchange and routing key: Celery would bind a queue declared without them to the default
    # queue's, and every message for the main queue would then be copied into the resume queue too.
    return Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]


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
        # BRPOP the queues in the listed order (the resume queue first), not round robin.
        options["queue_order_strategy"] = "priority"
        if settings.broker_key_prefix:
            options["global_keyprefix"] = settings.broker_key_prefix
    return options


def make_celery(settings: Settings) -> Celery:
    """The Celery app for these settings; producer and worker must build it from the same settings."""
    app = Celery("lorasp", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport=f"{__name__}:InOrderFilesystemTransport" if settings.embedded else None,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        result_backend=None,
        task_ignore_result=True,
        task_default_queue=settings.queue_name,
        # A worker consumes both, the resume queue first (see the module docstring).
        task_queues=[_direct_queue(name) for name in worker_queue_names(settings)],
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


def enqueue_job(
    settings: Settings, job_id: str, resource_class: str | None = None, *, resume: bool = False
) -> None:
    """Ask a worker of `resource_class` to run `job_id`. Call it only after the job row is committed.

    `resume=True` for a job that already ran (its worker died): it goes ahead of never-started jobs.
    """
    queue = (
        resume_queue_name(settings, resource_class) if resume else job_queue_name(settings, resource_class)
    )
    _producer(settings).send_task(RUN_JOB_TASK, args=[job_id], queue=queue)
    log.info("enqueued job %s on queue %s", job_id, queue)


def send_task(settings: Settings, name: str, args: list[Any], *, countdown: float | None = None) -> None:
    """Send a short task by name on the service queue (`countdown`: run it no earlier than that many s)."""
    _producer(settings).send_task(name, args=args, queue=service_queue_name(settings), countdown=countdown)
