"""Fine-tuning jobs: create (validate, commit, then enqueue), read, page, cancel, pause, resume; events and
checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import String, cast, select
from sqlalchemy.orm import Session

from api.deps import EnqueueJob
from api.errors import APIError, not_found
from api.schemas.job_integrations import stored_integrations
from api.schemas.job_requests import CreateFineTuningJobRequest
from api.services.catalog import FORMATS_FOR_TASK, PREFERENCE_FORMATS
from api.services.files import lock_files_for_job
from api.services.job_integrations import check_integrations
from api.services.job_parent import JobBase, ParentStructure, resolve_job_base
from api.services.job_spec import build_spec
from api.services.job_tools import check_tool_support
from api.services.paging import fetch_page, newer_first_after
from lorasp_service import jobs, model_checkpoints, registry
from lorasp_service.admission import (
    Admission,
    InsufficientCapacityError,
    UnsupportedQuantizationError,
    admit,
)
from lorasp_service.ids import new_id
from lorasp_service.jobs import TrainingSpec
from lorasp_service.jobs.auto import DatasetSize
from lorasp_service.model_checkpoints import JobCheckpoint
from lorasp_service.orm import File, Job, JobEvent, Tenant
from lorasp_service.settings import DEFAULT_RESOURCE_CLASS, Settings
from lorasp_service.storage import BlobStorage

logger = logging.getLogger(__name__)


def _file_for_job(
    session: Session, tenant: Tenant, file_id: str, param: str, task: str, method_type: str
) -> File:
    row = registry.get_file_for_tenant(session, tenant.id, file_id)
    if row is None:
        raise not_found("file", file_id, param=param)
    allowed = FORMATS_FOR_TASK[task]
    if method_type == "dpo":  # preference pairs, and only a causal LM can generate their answers
        allowed = PREFERENCE_FORMATS if task == "causal-lm" else frozenset()
    if row.data_format not in allowed:
        trains_on = (
            f"{' or '.join(sorted(allowed))} data" if allowed else "no data (dpo needs a causal-lm model)"
        )
        raise APIError(
            400,
            f"File '{file_id}' is a {row.data_format} dataset, but a {method_type} job on a {task} model "
            f"trains on {trains_on}.",
            param=param,
            code="invalid_file_format",
        )
    return row


def _check_validation_labels(training: File, validation: File) -> None:
    known = set((training.stats or {}).get("label_counts") or {})
    unknown = sorted(set((validation.stats or {}).get("label_counts") or {}) - known)
    if unknown:
        raise APIError(
            400,
            f"Validation file '{validation.id}' has labels that the training file lacks: "
            f"{', '.join(unknown)}.",
            param="validation_file",
            code="invalid_file_format",
        )


def _check_parent_labels(training: File, parent: ParentStructure) -> None:
    """A seq-cls head's rows are the parent's labels: the training file may use no other."""
    known = set(parent.label_names or [])
    unknown = sorted(set((training.stats or {}).get("label_counts") or {}) - known)
    if unknown:
        raise APIError(
            400,
            f"Training file '{training.id}' has labels that the model it continues from "
            f"('{parent.model_id}') was not trained on: {', '.join(unknown)}; its labels are "
            f"{', '.join(sorted(known))}.",
            param="training_file",
            code="invalid_file_format",
        )


def _admit(settings: Settings, base: JobBase, spec: TrainingSpec, training: File) -> Admission:
    """The resource class to run on; a job that no class can hold is a 400 with the estimate."""
    longest = (training.stats or {}).get("max_example_tokens")
    try:
        return admit(
            settings, base.source or base.base_model, spec, longest if isinstance(longest, int) else None
        )
    except UnsupportedQuantizationError as error:
        param = f"method.{spec.method_type}.hyperparameters.{error.option}"
        raise APIError(
            400, f"Invalid value for '{param}': {error}.", param=param, code="unsupported_quantization"
        ) from None
    except InsufficientCapacityError as error:
        param = f"method.{spec.method_type}.hyperparameters.batch_size"
        raise APIError(
            400, f"Job cannot be admitted: {error}.", param=param, code="insufficient_capacity"
        ) from None


def create_job(
    session: Session,
    settings: Settings,
    storage: BlobStorage,
    tenant: Tenant,
    request: CreateFineTuningJobRequest,
    enqueue: EnqueueJob,
) -> Job:
    """`request.model` is a base model, or an adapter of the tenant to continue from (see job_parent)."""
    check_integrations(request.integrations, settings)
    base = resolve_job_base(session, settings, storage, tenant, request.model)
    method_type = request.method.type if request.method is not None else "supervised"
    training = _file_for_job(session, tenant, request.training_file, "training_file", base.task, method_type)
    if request.validation_file is not None:
        if method_type == "dpo":
            message = "A dpo job does not take a validation_file yet: its validation is not implemented."
            raise APIError(400, message, param="validation_file", code="invalid_file_format")
        validation = _file_for_job(
            session, tenant, request.validation_file, "validation_file", base.task, method_type
        )
        if base.task == "seq-cls":
            _check_validation_labels(training, validation)
    if base.parent is not None and base.task == "seq-cls":
        _check_parent_labels(training, base.parent)
    checked_files = {"training_file": training} | (
        {"validation_file": validation} if request.validation_file is not None else {}
    )
    check_tool_support(session, settings, storage, base.base_model, checked_files)
    lock_files_for_job(
        session, tenant.id, {"training_file": training.id, "validation_file": request.validation_file}
    )
    spec = build_spec(request, settings, DatasetSize.of_file(training), base)
    admission = _admit(settings, base, spec, training)
    job = Job(
        id=new_id("ftjob"),
        tenant_id=tenant.id,
        model=base.base_model,
        parent_model=base.parent.model_id if base.parent is not None else None,
        training_file_id=training.id,
        validation_file_id=request.validation_file,
        status=jobs.JobStatus.VALIDATING_FILES,
        suffix=request.suffix,
        user_metadata=request.metadata,
    )
    spec.store_on(job)
    job.resource_class = admission.resource_class
    job.estimated_memory_bytes = admission.estimate.total
    job.integrations = stored_integrations(request.integrations)
    session.add(job)
    session.flush()
    jobs.add_event(session, job.id, f"Created fine-tuning job: {job.id}")
    jobs.add_event(session, job.id, f"Validating training file: {training.id}")
    jobs.transition(session, job, jobs.JobStatus.QUEUED, "Files validated, moving job to queued state")
    session.commit()
    _send_to_workers(session, job, enqueue)
    return job


def _send_to_workers(session: Session, job: Job, enqueue: EnqueueJob) -> None:
    """Enqueue after commit (the worker must find the row); a broker failure fails the job visibly."""
    try:
        if job.resource_class is None or job.resource_class == DEFAULT_RESOURCE_CLASS:
            enqueue(job.id)
        else:
            enqueue(job.id, job.resource_class)
    except Exception as error:
        logger.exception("could not enqueue job %s", job.id)
        error_body = {"code": "queue_unavailable", "message": "The job queue is unreachable.", "param": None}
        jobs.transition(
            session,
            job,
            jobs.JobStatus.FAILED,
            "Could not queue the job: the broker is unreachable",
            level=jobs.EventLevel.ERROR,
            error=error_body,
        )
        session.commit()
        raise APIError(
            503,
            "The job queue is unreachable; the job was marked failed. Retry later.",
            code="queue_unavailable",
            type="server_error",
        ) from error


def get_job(session: Session, tenant: Tenant, job_id: str, *, for_update: bool = False) -> Job:
    job = registry.get_job_for_tenant(session, tenant.id, job_id, for_update=for_update)
    if job is None:
        raise not_found("fine-tuning job", job_id, param="fine_tuning_job_id")
    return job


@dataclass(frozen=True)
class MetadataFilter:
    """Which jobs a list keeps: those whose metadata holds every pair, or (only_null) those without any."""

    pairs: dict[str, str] = field(default_factory=dict)
    only_null: bool = False


def list_jobs(
    session: Session, tenant: Tenant, after: str | None, limit: int, metadata: MetadataFilter | None = None
) -> tuple[list[Job], bool]:
    """The tenant's jobs, newest first, kept by `metadata` (see MetadataFilter)."""
    statement = select(Job).where(Job.tenant_id == tenant.id)
    metadata = metadata or MetadataFilter()
    for key, value in metadata.pairs.items():
        statement = statement.where(Job.user_metadata[key].as_string() == value)
    if metadata.only_null:
        # A job created without metadata holds JSON null (SQLAlchemy's JSON default), not SQL NULL.
        statement = statement.where(Job.user_metadata.is_(None) | (cast(Job.user_metadata, String) == "null"))
    if after is not None:
        cursor = registry.get_job_for_tenant(session, tenant.id, after)
        if cursor is None:
            raise not_found("fine-tuning job", after, param="after")
        statement = statement.where(newer_first_after(Job.created_at, Job.id, cursor.created_at, cursor.id))
    return fetch_page(session, statement.order_by(Job.created_at.desc(), Job.id.desc()), limit)


def _move_locked(
    session: Session,
    tenant: Tenant,
    job_id: str,
    move: Callable[[Session, Job], None],
    refused: type[jobs.IllegalTransitionError],
    code: str,
    why: Callable[[str], str],
) -> Job:
    """Row-lock the job (its worker may be claiming it right now), apply `move`, commit; a refused move
    is a 400 `code` whose message is `why(current status)`."""
    job = get_job(session, tenant, job_id, for_update=True)
    try:
        move(session, job)
    except refused as error:
        message = f"Job '{job_id}' {why(error.current)}"
        raise APIError(400, message, param="fine_tuning_job_id", code=code) from error
    session.commit()
    return job


def cancel_job(session: Session, tenant: Tenant, job_id: str) -> Job:
    return _move_locked(
        session,
        tenant,
        job_id,
        jobs.request_cancel,
        jobs.JobNotCancellableError,
        "job_not_cancellable",
        lambda current: f"has already {current} and cannot be cancelled.",
    )


def pause_job(session: Session, tenant: Tenant, job_id: str) -> Job:
    """Queued: paused at once. Running: `pause_requested`; the worker checkpoints and moves it to paused."""
    return _move_locked(
        session,
        tenant,
        job_id,
        jobs.request_pause,
        jobs.JobNotPausableError,
        "job_not_pausable",
        lambda current: f"is {current} and cannot be paused: only a queued or running job can.",
    )


def resume_job(session: Session, tenant: Tenant, job_id: str, enqueue: EnqueueJob) -> Job:
    """Paused -> queued, committed, then enqueued: any worker continues it from its pause checkpoint."""
    job = _move_locked(
        session,
        tenant,
        job_id,
        jobs.resume,
        jobs.JobNotResumableError,
        "job_not_resumable",
        lambda current: f"is {current} and cannot be resumed: only a paused job can.",
    )
    _send_to_workers(session, job, enqueue)
    return job


def list_events(
    session: Session, tenant: Tenant, job_id: str, after: str | None, limit: int
) -> tuple[list[JobEvent], bool]:
    job = get_job(session, tenant, job_id)
    statement = select(JobEvent).where(JobEvent.job_id == job.id)
    if after is not None:
        cursor = registry.get_event(session, job.id, after)
        if cursor is None:
            raise not_found("event", after, param="after")
        statement = statement.where(JobEvent.seq < cursor.seq)
    return fetch_page(session, statement.order_by(JobEvent.seq.desc()), limit)


def list_checkpoints(
    session: Session, tenant: Tenant, job_id: str, after: str | None, limit: int
) -> tuple[Job, list[JobCheckpoint], bool]:
    """The job's user-visible checkpoints, newest first: its final model (once it succeeded) and the
    epoch checkpoint models it keeps. Internal resume checkpoints are not listed."""
    job = get_job(session, tenant, job_id)
    listed = [JobCheckpoint.of(adapter) for adapter in model_checkpoints.job_models(session, job.id)]
    if after is not None:
        position = next((index for index, item in enumerate(listed) if item.id == after), None)
        if position is None:
            raise not_found("checkpoint", after, param="after")
        listed = listed[position + 1 :]
    return job, listed[:limit], len(listed) > limit
