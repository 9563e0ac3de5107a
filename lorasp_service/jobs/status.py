"""A job's status (OpenAI's names) and every move between statuses: the table and the two movers.

`transition` moves a Job row the caller holds in its session (the API: a job it is creating, or one
it has locked with SELECT ... FOR UPDATE). `transition_where` moves a job by a compare-and-set UPDATE
(the worker: "if the job is still in status X and I still hold its lease"). Both check the move against
`TRANSITIONS` first, stamp `finished_at` on a terminal status and add the move's event; an illegal move
raises `IllegalTransitionError`. Neither commits: the calling service owns the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Update, update
from sqlalchemy.orm import Session

from lorasp_service.jobs.events import EventLevel, add_event, utcnow
from lorasp_service.orm import Job
from lorasp_service.webhooks import emit_job_event


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"  # not in the official client's Literal; it parses without validating (see tests)


# Every legal move. A job is created in validating_files and queued in the same transaction (the files
# were validated at upload), so a worker only ever sees it from queued on. Resuming a job on another
# worker keeps it running: that is a change of lease (see lease.py), not of status. A user's pause moves
# a queued job at once and a running one when its worker has saved a checkpoint; resume queues it again
# (the next claim continues from that checkpoint).
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING_FILES: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PAUSED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PAUSED}
    ),
    JobStatus.PAUSED: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}
TERMINAL_STATUSES = frozenset(status for status, targets in TRANSITIONS.items() if not targets)
ACTIVE_STATUSES = frozenset(JobStatus) - TERMINAL_STATUSES


class IllegalTransitionError(ValueError):
    """A move the table does not allow (e.g. cancelling a succeeded job)."""

    def __init__(self, current: str, target: JobStatus) -> None:
        super().__init__(f"a job cannot move from {current!r} to {target.value!r}")
        self.current, self.target = current, target


def check_transition(current: str, target: JobStatus | str) -> JobStatus:
    """The target as a JobStatus if `current -> target` is allowed; raises IllegalTransitionError if not."""
    goal = JobStatus(target)
    try:
        source = JobStatus(current)
    except ValueError:
        raise IllegalTransitionError(current, goal) from None
    if goal not in TRANSITIONS[source]:
        raise IllegalTransitionError(current, goal)
    return goal


def _stamps(target: JobStatus) -> dict[str, Any]:
    return {"finished_at": utcnow(), "estimated_finish": None} if target in TERMINAL_STATUSES else {}


def transition(
    session: Session,
    job: Job,
    target: JobStatus,
    message: str,
    *,
    level: EventLevel | str = EventLevel.INFO,
    error: dict[str, Any] | None = None,
) -> None:
    """Move a job held in this session (created here, or row-locked) and add the event saying so."""
    job.status = check_transition(job.status, target)
    for name, value in _stamps(target).items():
        setattr(job, name, value)
    if error is not None:
        job.error = error
    add_event(session, job.id, message, level=level)
    _announce(session, job.id, target)


def transition_where(
    session: Session,
    job_id: str,
    current: str,
    target: JobStatus,
    message: str,
    *,
    guard: ColumnElement[bool] | None = None,
    values: Mapping[str, Any] | None = None,
    level: EventLevel | str = EventLevel.INFO,
    data: dict[str, Any] | None = None,
) -> bool:
    """Compare-and-set: move the job if it is still in `current` (and `guard` holds); True if it moved.

    The event is added only when the row changed. `values` are further columns to set with the status.
    """
    check_transition(current, target)
    condition = (Job.id == job_id) & (Job.status == current)
    if guard is not None:
        condition = condition & guard
    statement = update(Job).where(condition).values(status=target, **_stamps(target), **(values or {}))
    if not changed_rows(session, statement):
        return False
    add_event(session, job_id, message, level=level, data=data)
    _announce(session, job_id, target)
    return True


def _announce(session: Session, job_id: str, target: JobStatus) -> None:
    """A final status (and a pause) is announced to the tenant's webhooks, in the transaction that makes
    the move."""
    if target in TERMINAL_STATUSES or target == JobStatus.PAUSED:
        emit_job_event(session, job_id, target)


def changed_rows(session: Session, statement: Update) -> int:
    """Execute an UPDATE and return how many rows it changed (the compare-and-set result)."""
    # No session synchronisation: callers compare against the values they read *before* the update.
    result = cast(
        "CursorResult[Any]", session.execute(statement.execution_options(synchronize_session=False))
    )
    return int(result.rowcount)


class JobNotCancellableError(IllegalTransitionError):
    """Cancel asked of a job that has already finished."""


def request_cancel(session: Session, job: Job) -> None:
    """Cancel a job the caller has row-locked: at once if it has not started, else at the worker's next step.

    A running job gets `cancel_requested` (the worker polls it and moves the job to cancelled itself).
    """
    if job.status in TERMINAL_STATUSES:
        raise JobNotCancellableError(job.status, JobStatus.CANCELLED)
    if job.status == JobStatus.RUNNING:
        if not job.cancel_requested:
            job.cancel_requested = True
            add_event(session, job.id, "Cancellation requested; the job stops at its next step")
        return
    job.cancel_requested = True
    transition(session, job, JobStatus.CANCELLED, "Fine-tuning job cancelled")


class JobNotPausableError(IllegalTransitionError):
    """Pause asked of a job that is neither queued nor running."""


class JobNotResumableError(IllegalTransitionError):
    """Resume asked of a job that is not paused."""


def request_pause(session: Session, job: Job) -> None:
    """Pause a job the caller has row-locked: a queued one at once, a running one at the worker's next step.

    A running job gets `pause_requested`: its worker saves a checkpoint, frees itself and moves the job to
    paused (a second pause before then changes nothing).
    """
    if job.status == JobStatus.RUNNING and not job.cancel_requested:
        if not job.pause_requested:
            job.pause_requested = True
            add_event(session, job.id, "Pause requested; the job pauses at its next step")
        return
    if job.status != JobStatus.QUEUED or job.cancel_requested:
        raise JobNotPausableError(job.status, JobStatus.PAUSED)
    transition(session, job, JobStatus.PAUSED, "Job paused")


def resume(session: Session, job: Job) -> None:
    """Queue a paused job the caller has row-locked again; the caller enqueues it after committing."""
    if job.status != JobStatus.PAUSED:
        raise JobNotResumableError(job.status, JobStatus.QUEUED)
    job.pause_requested = False
    job.resumes += 1  # the claim that follows is not a lost worker's retry (see lease.claim_job)
    transition(session, job, JobStatus.QUEUED, "Job resumed")
