"""User-visible checkpoints: at the end of each epoch but the last, the job's adapter becomes a model.

As OpenAI does, a job keeps its final model (the job's `fine_tuned_model`) and the checkpoints of the
last two epochs before it. Each checkpoint is an `Adapter` row (`checkpoint_job_id` set, `job_id` NULL)
with the id `<fine_tuned_model>:ckpt-step-N`, so `registry.get_adapter_for_tenant` resolves it in the
one lookup every model id goes through: chat, load/unload, download, `models.retrieve`. Internal
resume checkpoints (`Checkpoint` rows, `training_progress`) are a different thing and stay internal.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lorasp_core import read_adapter_metadata, save_adapter
from lorasp_core.train_config import BaseQuantization, ProgressEvent, TaskType, TrainCallback
from lorasp_service import registry, step_metrics
from lorasp_service.db import session_scope
from lorasp_service.jobs.events import add_event, utcnow
from lorasp_service.jobs.lease import held_by
from lorasp_service.jobs.spec import KEPT_EPOCH_CHECKPOINTS
from lorasp_service.jobs.status import JobStatus, changed_rows
from lorasp_service.orm import Adapter, Job
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

log = logging.getLogger(__name__)


def checkpoint_model_id(fine_tuned_model: str, step: int) -> str:
    return f"{fine_tuned_model}:ckpt-step-{step}"


@dataclass(frozen=True)
class JobCheckpoint:
    """One of a job's user-visible checkpoints as `GET .../checkpoints` lists it: a model, by its
    `<fine_tuned_model>:ckpt-step-N` id (for the final model too, which that id also resolves to)."""

    id: str
    model_id: str
    step: int
    metrics: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, adapter: Adapter) -> JobCheckpoint:
        step = adapter.step or 0
        final = adapter.checkpoint_job_id is None
        model_id = checkpoint_model_id(adapter.id, step) if final else adapter.id
        # a stable id derived from the model's, so paging cursors survive without a table of their own
        digest = hashlib.sha256(model_id.encode()).hexdigest()[:24]
        metrics = {"step": step, **(adapter.metrics or {})}
        return cls(f"ftckpt-{digest}", model_id, step, metrics, adapter.created_at)


def job_models(session: Session, job_id: str) -> list[Adapter]:
    """The job's final model (if it succeeded) and its checkpoint models, highest step first."""
    statement = select(Adapter).where((Adapter.job_id == job_id) | (Adapter.checkpoint_job_id == job_id))
    return list(session.scalars(statement.order_by(Adapter.step.desc(), Adapter.id)))


def checkpoint_adapters(session: Session, job_id: str) -> list[Adapter]:
    """The job's checkpoint models, newest (highest step) first."""
    statement = select(Adapter).where(Adapter.checkpoint_job_id == job_id)
    return list(session.scalars(statement.order_by(Adapter.step.desc(), Adapter.id)))


def register_checkpoint_model(
    settings: Settings, worker_id: str, attempt: int, adapter: Adapter, keep: int = KEPT_EPOCH_CHECKPOINTS
) -> list[str]:
    """Add (or replace, for a re-run epoch) the checkpoint row and drop all but the newest `keep`, if the
    lease is still held; returns the blob keys to remove after the commit (none if the lease was lost)."""
    job_id = adapter.checkpoint_job_id
    assert job_id is not None
    with session_scope(settings) as session:
        fence = update(Job).where(
            Job.id == job_id, Job.status == JobStatus.RUNNING, held_by(worker_id, attempt)
        )
        if changed_rows(session, fence.values(heartbeat_at=utcnow())) != 1:
            session.rollback()
            return []
        stale: list[str] = []
        existing = session.get(Adapter, adapter.id)
        if existing is not None:  # the same epoch again (a resumed run): the new files replace the old
            stale += [
                key
                for key in registry.delete_adapter(session, existing)
                if key not in (adapter.storage_key, adapter.archive_key)
            ]
        session.add(adapter)
        session.flush()
        for old in checkpoint_adapters(session, job_id)[keep:]:
            stale += registry.delete_adapter(session, old)
        add_event(
            session,
            job_id,
            f"Checkpoint model created at step {adapter.step}: {adapter.id}",
            data={"step": adapter.step, "fine_tuned_model_checkpoint": adapter.id},
        )
        session.commit()
        return stale


@dataclass
class EpochCheckpointCallback(TrainCallback):
    """Saves each finished epoch's adapter (but the last one's: that is the final model) as a model."""

    settings: Settings
    storage: BlobStorage
    job: Job
    worker_id: str
    attempt: int
    fine_tuned_model: str
    task: TaskType
    work_dir: Path
    rank: int
    freeze_ratio: float
    base_quantization: BaseQuantization = "none"
    label_names: list[str] | None = None
    chat_template: str | None = None
    total_steps: int = 0
    last_event: ProgressEvent | None = None

    def on_train_begin(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def on_progress(self, event: ProgressEvent) -> None:
        self.last_event = event

    def metrics(self, step: int) -> dict[str, Any]:
        """OpenAI's checkpoint metrics of `step`: its training loss and accuracy, and the validation
        figures of the sample and the full file (evaluated at every checkpoint when there is a file)."""
        if self.last_event is not None and self.last_event.step == step:
            return step_metrics.checkpoint_metrics(self.last_event)
        return {"step": step}

    def on_epoch_end(self, step: int, epoch: int, model: Any) -> None:
        if step >= self.total_steps:
            return  # the final model is saved and registered by the job's completion
        model_id = checkpoint_model_id(self.fine_tuned_model, step)
        key = f"adapters/{self.job.id}-ckpt-step-{step}"
        local = self.work_dir / f"epoch-checkpoint-{step}"
        saved = save_adapter(
            model,
            local,
            base_model_name_or_path=self.job.model,
            task_type=self.task,
            label_names=self.label_names,
            chat_template=self.chat_template,
            training_summary={"job_id": self.job.id, "step": step, "epoch": epoch + 1},
        )
        try:
            self.storage.put_dir(key, saved)
            size, digest = self.storage.archive_dir(key, f"{key}.tar.gz")
            targets = target_module_names(saved)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        adapter = Adapter(
            id=model_id,
            tenant_id=self.job.tenant_id,
            job_id=None,
            checkpoint_job_id=self.job.id,
            base_model=self.job.model,
            base_quantization=self.base_quantization,
            task=self.task,
            source="training",
            storage_key=key,
            archive_key=f"{key}.tar.gz",
            sha256=digest,
            bytes=size,
            rank=self.rank,
            freeze_ratio=self.freeze_ratio,
            target_modules=targets,
            label_names=self.label_names,
            step=step,
            metrics=self.metrics(step),
        )
        stale = register_checkpoint_model(self.settings, self.worker_id, self.attempt, adapter)
        registry.delete_blobs(self.storage, stale)


def target_module_names(adapter_dir: Path) -> list[str]:
    targets = read_adapter_metadata(adapter_dir).target_modules
    return [targets] if isinstance(targets, str) else list(targets)
