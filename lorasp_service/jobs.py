"""Job-state operations the worker uses: the lease (claim, take-over, heartbeat), events, outcomes.

A job is run under a lease: `worker_id` + `heartbeat_at`, with `attempts` as the fencing token. Every
write a worker makes after claiming is conditional on still holding the lease (same worker_id, same
attempt, status 'running'), so a worker that lost its lease can never overwrite the job.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from lorasp_service.db import session_scope
from lorasp_service.ids import new_id
from lorasp_service.orm import Adapter, Checkpoint, Job, JobEvent
from lorasp_service.settings import Settings
from lorasp_service.webhooks import emit_job_event

log = logging.getLogger(__name__)

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
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


def utcnow() -> datetime:
    return datetime.now(UTC)


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


def add_event(
    session: Session, job_id: str, message: str, *, level: str = "info", type: str = "message",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(JobEvent(id=new_id("ftevent"), job_id=job_id, level=level, type=type, message=message,
                         data=data, created_at=utcnow()))


def _update(session: Session, statement: Any) -> int:
    """Execute an UPDATE and return how many rows it changed (the compare-and-set result)."""
    # No session synchronisation: callers compare against the values they read *before* the update.
    statement = statement.execution_options(synchronize_session=False)
    result = cast("CursorResult[Any]", session.execute(statement))
    return int(result.rowcount)


def _held(job_id: str, worker_id: str, attempt: int) -> Any:
    return (Job.id == job_id) & (Job.status == "running") & (Job.worker_id == worker_id) & (
        Job.attempts == attempt)


def claim_job(settings: Settings, job_id: str, worker_id: str) -> Claim:
    """Compare-and-set the job into 'running' for this worker, or say why not."""
    with session_scope(settings) as session:
        for _ in range(3):  # re-read when another worker changed the row between read and CAS
            job = session.get(Job, job_id, populate_existing=True)
            if job is None:
                return Claim(ClaimOutcome.NOT_FOUND)
            if job.status in TERMINAL_STATUSES:
                return Claim(ClaimOutcome.TERMINAL)
            now = utcnow()
            if job.status != "running":
                if job.cancel_requested:
                    done = _update(session,
                        update(Job).where(Job.id == job_id, Job.status == job.status)
                        .values(status="cancelled", finished_at=now)
                    )
                    if done:
                        add_event(session, job_id, "Job cancelled before it started")
                        emit_job_event(session, job_id, "cancelled")
                        session.commit()
                        return Claim(ClaimOutcome.CANCELLED)
                    session.rollback()
                    continue
                claimed = _update(session,
                    update(Job).where(Job.id == job_id, Job.status == job.status)
                    .values(status="running", worker_id=worker_id, heartbeat_at=now,
                            started_at=job.started_at or now, attempts=Job.attempts + 1)
                )
                if claimed:
                    add_event(session, job_id, f"Fine-tuning job started (worker {worker_id})")
                    session.commit()
                    return Claim(ClaimOutcome.CLAIMED, attempt=job.attempts + 1)
                session.rollback()
                continue
            if not lease_is_dead(job, settings, worker_id, now):
                return Claim(ClaimOutcome.HELD)
            if job.attempts >= settings.max_job_attempts:
                failed = _fail_unless_changed(session, job, "worker_lost",
                                              f"the job's worker died {job.attempts} times")
                if failed:
                    return Claim(ClaimOutcome.EXHAUSTED)
                continue
            claim = _take_over(session, job, worker_id, now)
            if claim is not None:
                return claim
        return Claim(ClaimOutcome.HELD)


def _take_over(session: Session, job: Job, worker_id: str, now: datetime) -> Claim | None:
    """CAS the dead lease (worker_id, attempts) over to this worker; None if someone else was faster."""
    taken = _update(session,
        update(Job).where(Job.id == job.id, Job.status == "running",
                          Job.worker_id.is_not_distinct_from(job.worker_id), Job.attempts == job.attempts)
        .values(worker_id=worker_id, heartbeat_at=now, attempts=Job.attempts + 1)
    )
    if not taken:
        session.rollback()
        return None
    attempt = job.attempts + 1
    checkpoint = session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step.desc()).limit(1)
    ).first()
    if checkpoint is None:
        add_event(session, job.id, f"Worker {job.worker_id} was lost; restarting from the beginning",
                  level="warn", data={"attempt": attempt})
    else:
        add_event(session, job.id,
                  f"Worker {job.worker_id} was lost; resuming from checkpoint at step {checkpoint.step}",
                  level="warn", data={"attempt": attempt, "resumed_from_step": checkpoint.step})
    session.commit()
    if checkpoint is None:
        return Claim(ClaimOutcome.TAKEN_OVER, attempt=attempt)
    return Claim(ClaimOutcome.TAKEN_OVER, attempt=attempt, resume_step=checkpoint.step,
                 resume_key=checkpoint.storage_key)


def _fail_unless_changed(session: Session, job: Job, code: str, message: str) -> bool:
    done = _update(session,
        update(Job).where(Job.id == job.id, Job.status == job.status, Job.attempts == job.attempts)
        .values(status="failed", error={"code": code, "message": message, "param": None},
                finished_at=utcnow(), estimated_finish=None)
    )
    if done:
        add_event(session, job.id, f"Fine-tuning job failed: {message}", level="error")
        emit_job_event(session, job.id, "failed")
        session.commit()
        return True
    session.rollback()
    return False


@dataclass(frozen=True)
class LeaseCheck:
    held: bool
    cancel_requested: bool


def refresh_lease(settings: Settings, job_id: str, worker_id: str, attempt: int) -> LeaseCheck:
    """Heartbeat: extend the lease if still held, and report whether a cancel was requested."""
    with session_scope(settings) as session:
        held = _update(session, update(Job).where(_held(job_id, worker_id, attempt))
                               .values(heartbeat_at=utcnow())) == 1
        cancel = bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
        session.commit()
    return LeaseCheck(held=held, cancel_requested=cancel)


def cancel_requested(settings: Settings, job_id: str) -> bool:
    with session_scope(settings) as session:
        return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def record_metrics(settings: Settings, job_id: str, worker_id: str, attempt: int, message: str,
                   data: dict[str, Any], estimated_finish: datetime | None) -> bool:
    with session_scope(settings) as session:
        held = _update(session, update(Job).where(_held(job_id, worker_id, attempt))
                               .values(heartbeat_at=utcnow(), estimated_finish=estimated_finish))
        if held:
            add_event(session, job_id, message, type="metrics", data=data)
        session.commit()
        return held == 1


def record_message(settings: Settings, job_id: str, message: str, *, level: str = "info",
                   data: dict[str, Any] | None = None) -> None:
    with session_scope(settings) as session:
        add_event(session, job_id, message, level=level, data=data)
        session.commit()


def register_checkpoint(settings: Settings, job_id: str, step: int, storage_key: str,
                        metrics: dict[str, Any]) -> None:
    """A Checkpoint row for a directory already copied into storage (re-saving a step replaces it)."""
    with session_scope(settings) as session:
        existing = session.scalars(
            select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step == step)).first()
        if existing is None:
            session.add(Checkpoint(id=new_id("ftckpt"), job_id=job_id, step=step, storage_key=storage_key,
                                   metrics=metrics, created_at=utcnow()))
        else:
            existing.storage_key, existing.metrics = storage_key, metrics
        add_event(session, job_id, f"Checkpoint created at step {step}", data={"step": step})
        session.commit()


def finish_job(settings: Settings, job_id: str, worker_id: str, attempt: int, status: str,
               message: str, *, error: dict[str, Any] | None = None, level: str = "info") -> bool:
    """Move a job this worker holds into a terminal status (failed / cancelled)."""
    with session_scope(settings) as session:
        done = _update(session,
            update(Job).where(_held(job_id, worker_id, attempt))
            .values(status=status, error=error, finished_at=utcnow(), estimated_finish=None)
        )
        if done:
            add_event(session, job_id, message, level=level)
            emit_job_event(session, job_id, status)
            session.commit()
            return True
        session.rollback()
        log.warning("job %s: lease lost before it could be marked %s", job_id, status)
        return False


def orphaned_job_ids(settings: Settings, *, include_queued: bool = True) -> list[str]:
    """Running jobs whose lease is dead (and queued jobs): what a lost message would leave behind."""
    me, now = worker_identity(), utcnow()
    statuses = ("queued", "running") if include_queued else ("running",)
    with session_scope(settings) as session:
        jobs = session.scalars(select(Job).where(Job.status.in_(statuses))).all()
        return [job.id for job in jobs if job.status == "queued" or lease_is_dead(job, settings, me, now)]


def complete_job(settings: Settings, job_id: str, worker_id: str, attempt: int, adapter: Adapter,
                 trained_tokens: int) -> bool:
    """Register the adapter and mark the job succeeded, in one transaction, if the lease is still held."""
    with session_scope(settings) as session:
        done = _update(session,
            update(Job).where(_held(job_id, worker_id, attempt))
            .values(status="succeeded", fine_tuned_model=adapter.id, trained_tokens=trained_tokens,
                    finished_at=utcnow(), estimated_finish=None, error=None)
        )
        if not done:
            session.rollback()
            log.warning("job %s: lease lost before it could be marked succeeded", job_id)
            return False
        session.add(adapter)
        add_event(session, job_id, f"New fine-tuned model created: {adapter.id}")
        add_event(session, job_id, "The job has successfully completed")
        emit_job_event(session, job_id, "succeeded")
        session.commit()
        return True
