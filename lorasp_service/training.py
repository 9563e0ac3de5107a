"""Glue between a Job row and `lorasp_core.trainer`: what one worker does with one job.

`run_claimed_job` is called after `jobs.claim_job` gave this worker the job's lease. It validates the
training data with the base model's tokenizer, trains LoRA-SP (resuming from the job's last checkpoint
when it took over a dead worker's lease), copies every checkpoint into storage, and on success
registers the adapter and marks the job succeeded in one transaction. Every outcome is a job status
with an event; errors become `failed` with `error={code, message, param}`.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select
from torch import nn

from lorasp_core import (
    ClassificationExample,
    DatasetError,
    LoraSPConfig,
    ModelUnavailableError,
    apply_lorasp,
    label_names_for,
    read_examples,
    save_adapter,
    validate_dataset,
)
from lorasp_core.data import Example
from lorasp_core.models.catalog import LoadedModel
from lorasp_core.precision import PrecisionError, resolve_precision
from lorasp_core.quantization import QuantizationUnavailableError, check_quantization
from lorasp_core.train_config import TaskType
from lorasp_core.trainer import TrainConfig, train
from lorasp_core.training_ops import resolve_device
from lorasp_service import checkpoints, jobs, model_loading, registry, step_metrics, work_dirs
from lorasp_service.db import session_scope
from lorasp_service.integrations.wandb_logger import integration_callbacks
from lorasp_service.jobs import JobStatus
from lorasp_service.model_checkpoints import EpochCheckpointCallback, target_module_names
from lorasp_service.orm import Adapter, BaseModelRecord, File, Job
from lorasp_service.parent_model import (
    ParentAdapter,
    ParentUnavailableError,
    find_parent,
    load_parent_weights,
    unknown_labels,
)
from lorasp_service.rank_processes import data_parallel_ranks
from lorasp_service.redaction import without_paths
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage
from lorasp_service.training_progress import JobProgressCallback, LeaseKeeper

log = logging.getLogger(__name__)

# The outcome of a run that lost its lease: the job is another worker's now, its status unchanged.
LEASE_LOST = "lease_lost"


class JobFailure(Exception):
    """A failure the user can act on: becomes the job's `error`."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        message = without_paths(message)  # engine/OS errors name server files by absolute path
        super().__init__(message)
        self.code, self.message, self.param = code, message, param

    def as_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param}


def build_configs(
    job: Job, settings: Settings, task: TaskType, checkpoint_dir: Path, resume_from: Path | None
) -> tuple[LoraSPConfig, TrainConfig]:
    """The engine's configs from the spec the API resolved and stored (no second set of defaults)."""
    try:
        spec = jobs.TrainingSpec.from_job(job)
        return spec.to_lora_config(), spec.to_train_config(
            task,
            checkpoint_dir=checkpoint_dir,
            resume_from=resume_from,
            checkpoint_every_steps=settings.checkpoint_every_steps,
        )
    except ValueError as error:  # InvalidSpecError, or a value the engine's configs reject
        raise JobFailure("invalid_hyperparameters", f"invalid hyperparameters: {error}", "method") from error


def _record_precision(
    settings: Settings, job_id: str, worker_id: str, claim: jobs.Claim, config: TrainConfig
) -> None:
    """Resolve the precision on this worker's hardware (as `train` will) and put it on the job."""
    try:
        precision = resolve_precision(
            config.mixed_precision, config.base_dtype, resolve_device(config.device)
        )
        check_quantization(config.base_quantization, resolve_device(config.device))
    except PrecisionError as error:
        raise JobFailure("invalid_hyperparameters", str(error), "method") from error
    except QuantizationUnavailableError as error:
        # only the lorasp method's hyperparameters carry the option
        raise JobFailure(
            "invalid_hyperparameters", str(error), f"method.lorasp.hyperparameters.{error.option}"
        ) from error
    message = f"Training in {precision.compute} with the frozen base in {precision.base_dtype}"
    if config.base_quantization != "none":
        message += f", its linear weights in {config.base_quantization}"
    if not jobs.record_resolved_hyperparameters(
        settings, job_id, worker_id, claim.attempt, precision.to_dict(), message
    ):
        log.warning("job %s: lease lost before the precision was recorded", job_id)


def read_dataset(path: Path, param: str) -> list[Example]:
    report = validate_dataset(path)
    if not report.ok:
        raise JobFailure(f"invalid_{param}", f"{param} is not usable: {report.summary()}", param)
    try:
        return list(read_examples(path))
    except DatasetError as error:
        raise JobFailure(f"invalid_{param}", f"{param} is not usable: {error}", param) from error


def check_token_lengths(path: Path, tokenizer: Any, settings: Settings, param: str) -> None:
    report = validate_dataset(path, tokenizer=tokenizer, max_tokens=settings.max_example_tokens)
    if not report.ok:
        raise JobFailure(f"invalid_{param}", f"{param} is not usable: {report.summary()}", param)


def fine_tuned_model_id(job: Job) -> str:
    return registry.new_adapter_id(job.model, job.suffix, token=job.id.split("-", 1)[-1][:8])


def run_claimed_job(settings: Settings, job_id: str, worker_id: str, claim: jobs.Claim) -> str:
    """Run a job whose lease this worker holds; returns the outcome (the job's new status, or LEASE_LOST)."""
    keeper = LeaseKeeper(settings, job_id, worker_id, claim.attempt)
    keeper.start()
    work_dir = work_dirs.work_dir(settings, job_id, claim.attempt)
    try:
        return _train_and_register(settings, job_id, worker_id, claim, keeper, work_dir)
    except JobFailure as failure:
        log.info("job %s failed: %s", job_id, failure.message)
        _fail(settings, job_id, worker_id, claim, failure)
        return JobStatus.FAILED
    except SoftTimeLimitExceeded:
        message = f"the job ran longer than its time limit of {settings.job_time_limit_seconds} s"
        _fail(settings, job_id, worker_id, claim, JobFailure("time_limit_exceeded", message))
        return JobStatus.FAILED
    except jobs.TRANSIENT_DB_ERRORS:
        raise  # the task retries; the lease (same worker id) is taken over by the retry
    except Exception as error:  # noqa: BLE001 - any other error fails the job with its message
        log.exception("job %s: training error", job_id)
        unexpected = JobFailure("training_error", f"{type(error).__name__}: {error}")
        _fail(settings, job_id, worker_id, claim, unexpected)
        return JobStatus.FAILED
    finally:
        keeper.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


def _fail(settings: Settings, job_id: str, worker_id: str, claim: jobs.Claim, failure: JobFailure) -> None:
    jobs.finish_job(
        settings,
        job_id,
        worker_id,
        claim.attempt,
        JobStatus.FAILED,
        f"Fine-tuning job failed: {failure.message}",
        error=failure.as_error(),
        level=jobs.EventLevel.ERROR,
    )


@dataclass(frozen=True)
class JobInputs:
    """What every rank of a job trains from, read from the database, storage and the model store
    (nothing is written: ranks 1..N-1 read their inputs here too)."""

    job: Job
    task: TaskType
    training_path: Path
    validation_path: Path | None
    train_data: list[Example]
    eval_data: list[Example] | None
    label_names: list[str] | None
    parent: ParentAdapter | None
    loaded: LoadedModel


def read_job_inputs(settings: Settings, storage: BlobStorage, job_id: str) -> JobInputs:
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        files = {
            f.id: f
            for f in session.scalars(
                select(File).where(File.id.in_([job.training_file_id, job.validation_file_id]))
            )
        }
        try:
            parent = find_parent(session, storage, job)
        except ParentUnavailableError as error:
            raise JobFailure("model_not_available", str(error), "model") from error
    training_path = storage.path(files[job.training_file_id].storage_key)
    validation_path = None
    if job.validation_file_id:
        validation_path = storage.path(files[job.validation_file_id].storage_key)

    train_data = read_dataset(training_path, "training_file")
    eval_data = read_dataset(validation_path, "validation_file") if validation_path else None
    classification = isinstance(train_data[0], ClassificationExample)
    task: TaskType = "seq-cls" if classification else "causal-lm"
    label_names = label_names_for(train_data) if classification else None
    if parent is not None and label_names is not None:
        if missing := unknown_labels(label_names, parent):
            message = f"training_file has labels that the model it continues from lacks: {', '.join(missing)}"
            raise JobFailure("invalid_training_file", message, "training_file")
        label_names = parent.label_names  # the head's rows keep meaning the parent's labels
    with session_scope(settings) as session:
        base_row = session.get(BaseModelRecord, job.model)
    if base_row is None:
        raise JobFailure("model_not_available", f"base model {job.model!r} is no longer registered", "model")
    try:
        loaded = model_loading.load_model(
            settings,
            storage,
            base_row,
            task=task,
            seed=job.seed,
            num_labels=len(label_names) if label_names else None,
        )
    except ModelUnavailableError as error:
        raise JobFailure("model_unavailable", str(error), "model") from error
    except ValueError as error:
        raise JobFailure("invalid_model", str(error), "model") from error
    return JobInputs(
        job, task, training_path, validation_path, train_data, eval_data, label_names, parent, loaded
    )


def wrapped_model(inputs: JobInputs, lora: LoraSPConfig, resuming: bool) -> nn.Module:
    """The base with LoRA-SP applied and, for a continued job, its parent's weights (a resume
    checkpoint holds the weights itself)."""
    model = apply_lorasp(inputs.loaded.model, lora)
    if inputs.parent is not None and not resuming:
        try:
            load_parent_weights(model, inputs.parent)
        except ParentUnavailableError as error:
            raise JobFailure("model_not_available", str(error), "model") from error
    return model


def _train_and_register(
    settings: Settings, job_id: str, worker_id: str, claim: jobs.Claim, keeper: LeaseKeeper, work_dir: Path
) -> str:
    storage = BlobStorage(settings.blob_dir)
    inputs = read_job_inputs(settings, storage, job_id)
    job, task, loaded, parent = inputs.job, inputs.task, inputs.loaded, inputs.parent
    train_data, eval_data, label_names = inputs.train_data, inputs.eval_data, inputs.label_names
    check_token_lengths(inputs.training_path, loaded.tokenizer, settings, "training_file")
    if inputs.validation_path:
        check_token_lengths(inputs.validation_path, loaded.tokenizer, settings, "validation_file")

    resume_from = storage.path(claim.resume_key) if claim.resume_key else None
    lora, config = build_configs(job, settings, task, work_dir / "checkpoints", resume_from)
    if resume_from is not None:
        message = f"Resuming training from the checkpoint at step {claim.resume_step}"
        jobs.record_message(settings, job_id, message, data={"resumed_from_step": claim.resume_step})
    _record_precision(settings, job_id, worker_id, claim, config)
    with session_scope(settings) as session:  # the job as it now reads (its W&B config shows the precision)
        job = session.get(Job, job_id) or job
    model = wrapped_model(inputs, lora, resuming=claim.resume_key is not None)
    if parent is not None and claim.resume_key is None:
        jobs.record_message(
            settings,
            job_id,
            f"Starting from the weights of {parent.model_id}",
            data={"parent_model": parent.model_id},
        )
    callback = JobProgressCallback(settings, job_id, worker_id, claim.attempt, keeper, storage)
    chat_template = getattr(loaded.tokenizer, "chat_template", None)
    epoch_models = EpochCheckpointCallback(
        settings,
        storage,
        job,
        worker_id,
        claim.attempt,
        fine_tuned_model_id(job),
        task,
        work_dir,
        rank=lora.r,
        freeze_ratio=lora.freeze_ratio,
        base_quantization=config.base_quantization,
        label_names=label_names,
        chat_template=chat_template,
    )
    ranks = data_parallel_ranks(
        settings,
        job_id,
        claim.attempt,
        claim.resume_key,
        config.processes,
        work_dir,
        resolve_device(config.device),
    )
    with integration_callbacks(settings, job) as integrations, ranks:  # a W&B run, when the job has one
        result = train(
            config,
            model,
            loaded.tokenizer,
            train_data,
            eval_data,
            callbacks=[callback, epoch_models, *integrations.callbacks],
            label_names=label_names,
        )
        if result.cancelled:  # how the W&B run ends: continued later (a pause, a lost lease) or cancelled
            continues = keeper.lost or (keeper.pause_requested and not keeper.cancel_requested)
            integrations.stopped(JobStatus.PAUSED if continues else JobStatus.CANCELLED)

    if keeper.lost:
        log.warning("job %s: lease lost during training; leaving the job to its new worker", job_id)
        return LEASE_LOST
    if result.cancelled and keeper.pause_requested and not keeper.cancel_requested:
        # The trainer saved step-<N> and on_checkpoint stored it: resuming continues from there.
        if not jobs.pause_job(settings, job_id, worker_id, claim.attempt, result.steps):
            return LEASE_LOST
        return JobStatus.PAUSED
    if result.cancelled:
        jobs.finish_job(
            settings,
            job_id,
            worker_id,
            claim.attempt,
            JobStatus.CANCELLED,
            f"Fine-tuning job cancelled at step {result.steps} of {result.total_steps}",
        )
        return JobStatus.CANCELLED

    adapter_key, archive_key = f"adapters/{job_id}", f"adapters/{job_id}.tar.gz"
    summary = {
        "job_id": job_id,
        "steps": result.steps,
        "trained_tokens": result.trained_tokens,
        "train_loss": result.train_loss,
        "eval_metrics": result.eval_metrics,
        **(result.precision.to_dict() if result.precision is not None else {}),
        "gradient_checkpointing": result.gradient_checkpointing,
        "base_quantization": result.base_quantization,
    }
    saved = save_adapter(
        model,
        work_dir / "adapter",
        base_model_name_or_path=job.model,
        task_type=task,
        label_names=label_names,
        chat_template=chat_template,
        training_summary=summary,
    )
    storage.put_dir(adapter_key, saved)
    size, digest = storage.archive_dir(adapter_key, archive_key)
    adapter = Adapter(
        id=fine_tuned_model_id(job),
        tenant_id=job.tenant_id,
        job_id=job_id,
        base_model=job.model,
        base_quantization=result.base_quantization,
        task=task,
        source="training",
        storage_key=adapter_key,
        archive_key=archive_key,
        sha256=digest,
        bytes=size,
        rank=lora.r,
        freeze_ratio=lora.freeze_ratio,
        target_modules=target_module_names(saved),
        label_names=label_names,
        step=result.steps,
        metrics=epoch_models.metrics(result.steps),
    )
    callback.flush()  # every step's metrics event is in the database before the CSV is made of them
    with session_scope(settings) as session:
        results = step_metrics.result_file(session, storage, job)
    if not jobs.complete_job(
        settings, job_id, worker_id, claim.attempt, adapter, result.trained_tokens, [results]
    ):
        storage.delete(results.storage_key)
        return LEASE_LOST
    checkpoints.discard_after_success(settings, storage, job_id)
    return JobStatus.SUCCEEDED
