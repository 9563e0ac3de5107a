"""The lease a worker runs a job under: claim, take-over of a dead worker's job, heartbeat.

A job is run under a lease: `worker_id` + `heartbeat_at`, with `attempts` as the fencing token. Every
write a worker makes after claiming is conditional on still holding the lease (same worker_id, same
attempt, status running: `held_by`), so a worker that lost its lease can never overwrite the job.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from lorasp_service.db import session_scope
from lorasp_service.jobs.events import EventLevel, add_event, utcnow
from lorasp_service.jobs.status import TERMINAL_STATUSES, JobStatus, changed_rows, transition_where
from lorasp_service.orm import Checkpoint, Job
from lorasp_service.settings import Settings

# Transient I/O the task retries with backoff (a DB restart, a dropped connection, a locked SQLite).
TRANSIENT_DB_ERRORS: tuple[type[Exception], ...] = (OperationalError,)


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"  # queued -> running by this worker
    TAKEN_OVER = "taken_over"  # running with a dead lease -> this worker resumes it
    NOT_FOUND = "not_found"
    TERMINAL = "terminal"  # already succeeded / failed / cancelled: a redelivered message
    HELD = "held"  # running under a live lease of another worker: a duplicate message
    CANCELLED = "cancelled"  # cancel was requested before it started
    EXHAUSTED = "exhausted"  # its workers died too often: failed
    PAUSED = "paused"  # paused while its message waited: resuming sends a new one


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    attempt: int = 0
    resume_step: int | None = None
    resume_key: str | None = None  # storage key of the checkpoint to resume from

    @property
    def runs(self) -> bool:
        return self.outcome in (ClaimOutcome.CLAIMED, ClaimOutcome.TAKEN_OVER)


def worker_identity() -> str:
    """`host:pid` of this process: a lease holder on this host whose pid is gone is known dead."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def lease_is_dead(job: Job, settings: Settings, me: str, now: datetime) -> bool:
    if job.heartbeat_at is None or job.worker_id is None:
        return True
    if now - _as_utc(job.heartbeat_at) > timedelta(seconds=settings.heartbeat_stale_seconds):
        return True
    host, _, pid_text = job.worker_id.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    if job.worker_id == me:
        return True  # an earlier attempt in this very process has ended (one task at a time)
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True  # e.g. the pool process was killed and its message re-queued at once
    except PermissionError:
        return False
    return False


def held_by(worker_id: str, attempt: int) -> ColumnElement[bool]:
    """The lease condition (beside status running) of every write a worker makes after claiming."""
    return (Job.worker_id == worker_id) & (Job.attempts == attempt)


def claim_job(settings: Settings, job_id: str, worker_id: str) -> Claim:
    """Compare-and-set the job into running for this worker, or say why not."""
    with session_scope(settings) as session:
        for _ in range(3):  # re-read when another worker changed the row between read and CAS
            job = session.get(Job, job_id, populate_existing=True)
            if job is None:
                return Claim(ClaimOutcome.NOT_FOUND)
            if job.status in TERMINAL_STATUSES:
                return Claim(ClaimOutcome.TERMINAL)
            if job.status == JobStatus.PAUSED:
                return Claim(ClaimOutcome.PAUSED)
            now = utcnow()
            if job.status != JobStatus.RUNNING:
                if job.cancel_requested:
                    if transition_where(
                        session, job_id, job.status, JobStatus.CANCELLED, "Job cancelled before it started"
                    ):
                        session.commit()
                        return Claim(ClaimOutcome.CANCELLED)
                    session.rollback()
                    continue
                values = {
                    "worker_id": worker_id,
                    "heartbeat_at": now,
                    "started_at": job.started_at or now,
                    "attempts": Job.attempts + 1,
                }
                if transition_where(
                    session,
                    job_id,
                    job.status,
                    JobStatus.RUNNING,
                    f"Fine-tuning job started (worker {worker_id})",
                    values=values,
                ):
                    # A resumed (once paused) job continues from the checkpoint its pause wrote.
                    checkpoint = _latest_checkpoint(session, job_id)
                    session.commit()
                    if checkpoint is None:
                        return Claim(ClaimOutcome.CLAIMED, attempt=job.attempts + 1)
                    return Claim(
                        ClaimOutcome.CLAIMED,
                        attempt=job.attempts + 1,
                        resume_step=checkpoint.step,
                        resume_key=checkpoint.storage_key,
                    )
                session.rollback()
                continue
            if not lease_is_dead(job, settings, worker_id, now):
                return Claim(ClaimOutcome.HELD)
            # A resume is a claim too; only the others count against the limit on lost workers.
            if job.attempts - job.resumes >= settings.max_job_attempts:
                if _fail_exhausted(session, job):
                    return Claim(ClaimOutcome.EXHAUSTED)
                continue
            claim = _take_over(session, job, worker_id, now)
            if claim is not None:
                return claim
        return Claim(ClaimOutcome.HELD)


def _take_over(session: Session, job: Job, worker_id: str, now: datetime) -> Claim | None:
    """CAS the dead lease (worker_id, attempts) over to this worker; None if someone else was faster."""
    taken = changed_rows(
        session,
        update(Job)
        .where(
            Job.id == job.id,
            Job.status == JobStatus.RUNNING,
            Job.worker_id.is_not_distinct_from(job.worker_id),
            Job.attempts == job.attempts,
        )
        .values(worker_id=worker_id, heartbeat_at=now, attempts=Job.attempts + 1),
    )
    if not taken:
        session.rollback()
        return None
    attempt = job.attempts + 1
    checkpoint = _latest_checkpoint(session, job.id)
    if checkpoint is None:
        add_event(
            session,
            job.id,
            f"Worker {job.worker_id} was lost; restarting from the beginning",
            level=EventLevel.WARN,
            data={"attempt": attempt},
        )
    else:
        add_event(
            session,
            job.id,
            f"Worker {job.worker_id} was lost; resuming from checkpoint at step {checkpoint.step}",
            level=EventLevel.WARN,
            data={"attempt": attempt, "resumed_from_step": checkpoint.step},
        )
    session.commit()
    if checkpoint is None:
        return Claim(ClaimOutcome.TAKEN_OVER, attempt=attempt)
    return Claim(
        ClaimOutcome.TAKEN_OVER,
        attempt=attempt,
        resume_step=checkpoint.step,
        resume_key=checkpoint.storage_key,
    )


def _latest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    return session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step.desc()).limit(1)
    ).first()


def _fail_exhausted(session: Session, job: Job) -> bool:
    message = f"the job's worker died {job.attempts - job.resumes} times"
    error = {"code": "worker_lost", "message": message, "param": None}
    if transition_where(
        session,
        job.id,
        job.status,
        JobStatus.FAILED,
        f"Fine-tuning job failed: {message}",
        guard=Job.attempts == job.attempts,
        values={"error": error},
        level=EventLevel.ERROR,
    ):
        session.commit()
        return True
    session.rollback()
    return False


@dataclass(frozen=True)
class LeaseCheck:
    held: bool
    cancel_requested: bool
    pause_requested: bool = False


def refresh_lease(settings: Settings, job_id: str, worker_id: str, attempt: int) -> LeaseCheck:
    """Heartbeat: extend the lease if still held, and report whether a cancel was requested."""
    with session_scope(settings) as session:
        statement = (
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING, held_by(worker_id, attempt))
            .values(heartbeat_at=utcnow())
        )
        held = changed_rows(session, statement) == 1
        cancel, pause = _stop_requests(session, job_id)
        session.commit()
    return LeaseCheck(held=held, cancel_requested=cancel, pause_requested=pause)


def _stop_requests(session: Session, job_id: str) -> tuple[bool, bool]:
    row = session.execute(select(Job.cancel_requested, Job.pause_requested).where(Job.id == job_id)).first()
    return (bool(row.cancel_requested), bool(row.pause_requested)) if row is not None else (False, False)


def cancel_requested(settings: Settings, job_id: str) -> bool:
    with session_scope(settings) as session:
        return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def stop_requests(settings: Settings, job_id: str) -> LeaseCheck:
    """Whether a cancel or a pause was asked of the job (`held` is not checked here: always True)."""
    with session_scope(settings) as session:
        cancel, pause = _stop_requests(session, job_id)
    return LeaseCheck(held=True, cancel_requested=cancel, pause_requested=pause)


def orphaned_job_ids(settings: Settings, *, include_queued: bool = True) -> list[str]:
    """Running jobs whose lease is dead (and queued jobs): what a lost message would leave behind."""
    me, now = worker_identity(), utcnow()
    statuses = (JobStatus.QUEUED, JobStatus.RUNNING) if include_queued else (JobStatus.RUNNING,)
    with session_scope(settings) as session:
        jobs = session.scalars(select(Job).where(Job.status.in_(statuses))).all()
        return [
            job.id for job in jobs if job.status == JobStatus.QUEUED or lease_is_dead(job, settings, me, now)
        ]
