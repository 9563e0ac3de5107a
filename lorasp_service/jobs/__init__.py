"""The fine-tuning job as one domain: its spec, its statuses and their moves, its events, its lease.

- `spec`: `TrainingSpec`, built once by the API, stored on the job, read back by the worker.
- `status`: `JobStatus`, the table of allowed moves, `transition` / `transition_where`, cancel, pause,
  resume.
- `events`: `add_event`, the one writer of job events (and `record_message`).
- `lease`: claim / take-over / heartbeat of the worker running a job.
- `outcomes`: a lease holder's writes: metrics, checkpoints, the final status.

The API and the worker import what they need from here (`from lorasp_service import jobs`).
"""

from __future__ import annotations

from lorasp_service.jobs.events import EventLevel, EventType, add_event, record_message, utcnow
from lorasp_service.jobs.lease import (
    TRANSIENT_DB_ERRORS,
    Claim,
    ClaimOutcome,
    LeaseCheck,
    cancel_requested,
    claim_job,
    held_by,
    lease_is_dead,
    orphaned_job_ids,
    refresh_lease,
    stop_requests,
    worker_identity,
)
from lorasp_service.jobs.outcomes import (
    complete_job,
    finish_job,
    pause_job,
    record_metrics,
    record_resolved_hyperparameters,
    register_checkpoint,
)
from lorasp_service.jobs.spec import InvalidSpecError, TrainingSpec
from lorasp_service.jobs.status import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    TRANSITIONS,
    IllegalTransitionError,
    JobNotCancellableError,
    JobNotPausableError,
    JobNotResumableError,
    JobStatus,
    check_transition,
    request_cancel,
    request_pause,
    resume,
    transition,
    transition_where,
)

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "TRANSIENT_DB_ERRORS",
    "TRANSITIONS",
    "Claim",
    "ClaimOutcome",
    "EventLevel",
    "EventType",
    "IllegalTransitionError",
    "InvalidSpecError",
    "JobNotCancellableError",
    "JobNotPausableError",
    "JobNotResumableError",
    "JobStatus",
    "LeaseCheck",
    "TrainingSpec",
    "add_event",
    "cancel_requested",
    "check_transition",
    "claim_job",
    "complete_job",
    "finish_job",
    "held_by",
    "lease_is_dead",
    "orphaned_job_ids",
    "record_resolved_hyperparameters",
    "pause_job",
    "record_message",
    "record_metrics",
    "refresh_lease",
    "register_checkpoint",
    "request_cancel",
    "request_pause",
    "resume",
    "transition",
    "stop_requests",
    "transition_where",
    "utcnow",
    "worker_identity",
]
