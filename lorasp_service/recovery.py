"""Jobs whose worker died: found by their dead lease and re-enqueued, when a worker starts and periodically.

A job's worker can die without anyone noticing: with Redis its message stays unacknowledged until the
visibility timeout (longer than the longest job, hours), and the filesystem broker never redelivers it.
So every worker process runs `StaleJobSweeper`, a daemon timer thread in Celery's main process that,
every `Settings.stale_sweep_interval_seconds`, re-enqueues running jobs whose lease is dead
(`jobs.orphaned_job_ids`: heartbeat older than `heartbeat_stale_seconds`, or a holder pid on this host
that is gone). Whichever worker is free takes the job over from its last checkpoint. The re-sent
message goes to the resume queue, which workers read before the main one, so the interrupted job runs
before jobs that never started.

Duplicates are harmless (the claim is a compare-and-set on the lease): if several workers sweep the
same dead job, one takes it over and the other messages find it held. Each sweeper re-sends a job
once per dead lease (see `LeaseMark`), so a dead job waiting for a free worker does not pile up messages.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, timedelta

from sqlalchemy import select

from lorasp_service import jobs
from lorasp_service.db import session_scope
from lorasp_service.orm import Job
from lorasp_service.queue import enqueue_job
from lorasp_service.settings import Settings
from lorasp_service.work_dirs import sweep_work_dirs

log = logging.getLogger(__name__)


# A re-sent job that nobody took over is sent again after this many stale periods: a safety net for a
# message lost between send and claim. Sooner would fill the queue with no-op duplicates while the job
# waits for a free worker (each one costs a pool process restart).
RESEND_AFTER_STALE_PERIODS = 10

# What a sweeper remembers of a job it re-sent: the dead lease it saw, (attempts, heartbeat stale), and
# when. A new dead lease (another attempt died) or a heartbeat that has since gone stale is sent again
# at once: a worker on another host only takes over a stale heartbeat, whatever the pid says here.
LeaseMark = tuple[int, bool]


def _lease_marks(settings: Settings, job_ids: list[str]) -> dict[str, LeaseMark]:
    if not job_ids:
        return {}
    now, stale = jobs.utcnow(), timedelta(seconds=settings.heartbeat_stale_seconds)
    with session_scope(settings) as session:
        rows = session.execute(select(Job.id, Job.attempts, Job.heartbeat_at).where(Job.id.in_(job_ids)))
        marks: dict[str, LeaseMark] = {}
        for job_id, attempts, beat in rows:
            beat = beat if beat is None or beat.tzinfo is not None else beat.replace(tzinfo=UTC)
            marks[job_id] = (attempts, beat is None or now - beat > stale)
        return marks


def _resource_classes(settings: Settings, job_ids: list[str]) -> dict[str, str | None]:
    """Each job's resource class: it is re-sent to its own class's queues (None: "default")."""
    if not job_ids:
        return {}
    with session_scope(settings) as session:
        rows = session.execute(select(Job.id, Job.resource_class).where(Job.id.in_(job_ids)))
        return {job_id: resource_class for job_id, resource_class in rows}


def requeue_orphaned_jobs(
    settings: Settings,
    *,
    include_queued: bool,
    recently_sent: dict[str, tuple[LeaseMark, float]] | None = None,
) -> list[str]:
    """Re-enqueue running jobs with a dead lease (resume queue) and, with `include_queued`, queued jobs.

    `include_queued` is for the filesystem broker at worker start: a killed worker's message is lost
    there, so a queued job may have none. `recently_sent` (the caller's memory of what it re-sent)
    skips a job already re-sent for the same dead lease. Returns the ids re-enqueued.
    """
    now = time.monotonic()
    dead = jobs.orphaned_job_ids(settings, include_queued=False)
    queued = []
    if include_queued:
        queued = [
            job_id for job_id in jobs.orphaned_job_ids(settings, include_queued=True) if job_id not in dead
        ]
    marks = _lease_marks(settings, dead) if recently_sent is not None else {}
    classes = _resource_classes(settings, dead + queued)
    resend_after = RESEND_AFTER_STALE_PERIODS * settings.heartbeat_stale_seconds
    sent: list[str] = []
    for job_id in dead:
        if recently_sent is not None:
            previous, mark = recently_sent.get(job_id), marks.get(job_id, (0, True))
            if previous is not None and previous[0] == mark and now - previous[1] < resend_after:
                continue
            recently_sent[job_id] = (mark, now)
        log.info("re-enqueuing job %s: its worker is gone (dead lease)", job_id)
        enqueue_job(settings, job_id, classes.get(job_id), resume=True)
        sent.append(job_id)
    for job_id in queued:
        log.info("re-enqueuing queued job %s: its message may have been lost", job_id)
        enqueue_job(settings, job_id, classes.get(job_id))
        sent.append(job_id)
    if recently_sent is not None:
        for job_id in [job_id for job_id in recently_sent if job_id not in dead]:
            del recently_sent[job_id]  # taken over or finished: forget it
    return sent


class StaleJobSweeper(threading.Thread):
    """Every sweep interval, re-enqueue the running jobs whose worker died (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="stale-job-sweeper", daemon=True)
        self.settings = settings
        self.recently_sent: dict[str, tuple[LeaseMark, float]] = {}
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.settings.stale_sweep_interval_seconds):
            self.sweep_once()

    def sweep_once(self) -> list[str]:
        try:
            sent = requeue_orphaned_jobs(
                self.settings, include_queued=False, recently_sent=self.recently_sent
            )
            sweep_work_dirs(self.settings)  # after the re-sends: a dead attempt's folder is never reused
            return sent
        except Exception as error:  # noqa: BLE001 - a database or broker outage must not end the sweeps
            log.warning("stale-job sweep failed (will retry): %s", error)
            return []

    def stop(self) -> None:
        self._stopped.set()
