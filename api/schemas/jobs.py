"""Fine-tuning job, event and checkpoint objects as OpenAI returns them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from api.schemas.common import unix_seconds, unix_seconds_required
from lorasp_service.model_checkpoints import JobCheckpoint
from lorasp_service.orm import Job, JobEvent


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(BaseModel):
    n_epochs: int | str
    batch_size: int | str
    learning_rate_multiplier: float | str


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: JobHyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None
    method: dict[str, Any]
    user_provided_suffix: str | None
    # lorasp extension: a cancel was asked for while the job runs (the worker stops at the next step).
    cancel_requested: bool = False
    # lorasp extension: a pause was asked for while the job runs (the worker checkpoints and pauses it).
    pause_requested: bool = False
    # lorasp extension: the resource class whose workers run the job and its estimated peak memory.
    resource_class: str | None = None
    estimated_memory_bytes: int | None = None

    @classmethod
    def from_row(cls, job: Job) -> FineTuningJob:
        error = job.error
        return cls(
            id=job.id,
            created_at=unix_seconds_required(job.created_at),
            error=None if not error else JobError(**error),
            fine_tuned_model=job.fine_tuned_model,
            finished_at=unix_seconds(job.finished_at),
            hyperparameters=JobHyperparameters(**job.hyperparameters),
            model=job.parent_model or job.model,  # what the user sent, as OpenAI echoes it
            organization_id=job.tenant_id,
            result_files=list(job.result_files or []),
            seed=job.seed,
            status=job.status,
            trained_tokens=job.trained_tokens,
            training_file=job.training_file_id,
            validation_file=job.validation_file_id,
            estimated_finish=unix_seconds(job.estimated_finish),
            integrations=job.integrations or None,
            metadata=job.user_metadata,
            method=job.method,
            user_provided_suffix=job.suffix,
            cancel_requested=job.cancel_requested,
            pause_requested=job.pause_requested,
            resource_class=job.resource_class,
            estimated_memory_bytes=job.estimated_memory_bytes,
        )


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    # For type "metrics": step, train_loss, learning_rate, tokens_per_second (+ eval metrics).
    data: dict[str, Any] | None
    type: str

    @classmethod
    def from_row(cls, event: JobEvent) -> FineTuningJobEvent:
        return cls(
            id=event.id,
            created_at=unix_seconds_required(event.created_at),
            level=event.level,
            message=event.message,
            data=event.data,
            type=event.type,
        )


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    step_number: int
    metrics: dict[str, Any]
    fine_tuning_job_id: str

    @classmethod
    def of(cls, checkpoint: JobCheckpoint, job: Job) -> FineTuningJobCheckpoint:
        return cls(
            id=checkpoint.id,
            created_at=unix_seconds_required(checkpoint.created_at),
            fine_tuned_model_checkpoint=checkpoint.model_id,
            step_number=checkpoint.step,
            metrics=checkpoint.metrics,
            fine_tuning_job_id=job.id,
        )
