"""What a worker holding a job's lease writes: metrics, checkpoints, and the job's final status.

Every write is fenced by the lease (`lease.held_by`): a worker that lost its lease changes nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from lorasp_service.db import session_scope
from lorasp_service.ids import new_id
from lorasp_service.jobs.events import EventLevel, EventType, add_event, utcnow
from lorasp_service.jobs.lease import held_by
from lorasp_service.jobs.spec import RESOLVED_BY_WORKER
from lorasp_service.jobs.status import JobStatus, changed_rows, transition_where
from lorasp_service.orm import Adapter, Checkpoint, File, Job
from lorasp_service.settings import Settings

log = logging.getLogger(__name__)


def record_metrics(
    settings: Settings,
    job_id: str,
    worker_id: str,
    attempt: int,
    events: list[tuple[str, dict[str, Any]]],
    estimated_finish: datetime | None,
) -> bool:
    """Metrics events (message, data), in order, plus a heartbeat, in one transaction; False if the
    lease was lost (nothing is written then)."""
    with session_scope(settings) as session:
        statement = (
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING, held_by(worker_id, attempt))
            .values(heartbeat_at=utcnow(), estimated_finish=estimated_finish)
        )
        held = changed_rows(session, statement)
        if held:
            for message, data in events:
                add_event(session, job_id, message, type=EventType.METRICS, data=data)
        session.commit()
        return held == 1


def record_resolved_hyperparameters(
    settings: Settings, job_id: str, worker_id: str, attempt: int, resolved: dict[str, Any], message: str
) -> bool:
    """Add what this worker resolved from its hardware (`spec.RESOLVED_BY_WORKER`: the precision that
    runs) to the job's stored method hyperparameters, with an event; False if the lease was lost."""
    unknown = set(resolved) - set(RESOLVED_BY_WORKER)
    if unknown:
        raise ValueError(f"not values a worker resolves: {sorted(unknown)}")
    with session_scope(settings) as session:
        job = session.scalars(
            select(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING, held_by(worker_id, attempt))
        ).first()
        if job is None:
            return False
        method_type = job.method["type"]
        params = job.method[method_type]
        hyperparameters = {**params["hyperparameters"], **resolved}
        # a new dict: SQLAlchemy's JSON column notices reassignment, not in-place edits
        job.method = {**job.method, method_type: {**params, "hyperparameters": hyperparameters}}
        add_event(session, job_id, message, data=dict(resolved))
        session.commit()
        return True


def register_checkpoint(
    settings: Settings, job_id: str, step: int, storage_key: str, metrics: dict[str, Any]
) -> None:
    """A Checkpoint row for a directory already copied into storage (re-saving a step replaces it)."""
    with session_scope(settings) as session:
        existing = session.scalars(
            select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step == step)
        ).first()
        if existing is None:
            session.add(
                Checkpoint(
                    id=new_id("ftckpt"),
                    job_id=job_id,
                    step=step,
                    storage_key=storage_key,
                    metrics=metrics,
                    created_at=utcnow(),
                )
            )
        else:
            existing.storage_key, existing.metrics = storage_key, metrics
        add_event(session, job_id, f"Checkpoint created at step {step}", data={"step": step})
        session.commit()


def finish_job(
    settings: Settings,
    job_id: str,
    worker_id: str,
    attempt: int,
    status: JobStatus | str,
    message: str,
    *,
    error: dict[str, Any] | None = None,
    level: EventLevel | str = EventLevel.INFO,
) -> bool:
    """Move a job this worker holds into failed / cancelled; False if the lease was lost."""
    target = JobStatus(status)
    with session_scope(settings) as session:
        if transition_where(
            session,
            job_id,
            JobStatus.RUNNING,
            target,
            message,
            guard=held_by(worker_id, attempt),
            values={"error": error},
            level=level,
        ):
            session.commit()
            return True
        session.rollback()
        log.warning("job %s: lease lost before it could be marked %s", job_id, target.value)
        return False


def pause_job(settings: Settings, job_id: str, worker_id: str, attempt: int, step: int) -> bool:
    """Move a job this worker holds into paused once its checkpoint at `step` is stored; False if the
    lease was lost. The lease is released (no worker), so resuming may continue on any worker."""
    with session_scope(settings) as session:
        if transition_where(
            session,
            job_id,
            JobStatus.RUNNING,
            JobStatus.PAUSED,
            "Job paused",
            guard=held_by(worker_id, attempt),
            values={
                "pause_requested": False,
                "worker_id": None,
                "heartbeat_at": None,
                "estimated_finish": None,
            },
            data={"step": step},
        ):
            session.commit()
            return True
        session.rollback()
        log.warning("job %s: lease lost before it could be marked paused", job_id)
        return False


def complete_job(
    settings: Settings,
    job_id: str,
    worker_id: str,
    attempt: int,
    adapter: Adapter,
    trained_tokens: int,
    result_files: list[File],
) -> bool:
    """Register the adapter and the result files and mark the job succeeded, in one transaction, if the
    lease is still held."""
    with session_scope(settings) as session:
        values = {
            "fine_tuned_model": adapter.id,
            "trained_tokens": trained_tokens,
            "error": None,
            "result_files": [row.id for row in result_files],
        }
        if not transition_where(
            session,
            job_id,
            JobStatus.RUNNING,
            JobStatus.SUCCEEDED,
            f"New fine-tuned model created: {adapter.id}",
            guard=held_by(worker_id, attempt),
            values=values,
        ):
            session.rollback()
            log.warning("job %s: lease lost before it could be marked succeeded", job_id)
            return False
        session.add(adapter)
        session.add_all(result_files)
        add_event(session, job_id, "The job has successfully completed")
        session.commit()
        return True
