"""Model objects: enabled base models of the catalog and the tenant's fine-tuned adapters."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from api.schemas.common import unix_seconds_required
from lorasp_service.orm import Adapter

# Base models have no creation date of their own; a fixed one keeps responses stable (2025-01-01).
BASE_MODEL_CREATED = 1735689600
BASE_MODEL_OWNER = "lorasp"


class ModelDetails(BaseModel):
    """lorasp extension: what the model is and, for an adapter, how it was made."""

    kind: Literal["base", "adapter"]
    task: str
    base_model: str | None = None
    description: str | None = None
    job_id: str | None = None
    rank: int | None = None
    freeze_ratio: float | None = None
    target_modules: list[str] | None = None
    label_names: list[str] | None = None
    bytes: int | None = None
    sha256: str | None = None
    # A job's checkpoint model (`<fine_tuned_model>:ckpt-step-N`): its step and that step's metrics.
    step: int | None = None
    metrics: dict[str, Any] | None = None


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    lorasp: ModelDetails

    @classmethod
    def base(cls, name: str, task: str, description: str) -> ModelObject:
        details = ModelDetails(kind="base", task=task, description=description)
        return cls(id=name, created=BASE_MODEL_CREATED, owned_by=BASE_MODEL_OWNER, lorasp=details)

    @classmethod
    def from_adapter(cls, adapter: Adapter) -> ModelObject:
        details = ModelDetails(
            kind="adapter",
            task=adapter.task,
            base_model=adapter.base_model,
            job_id=adapter.job_id or adapter.checkpoint_job_id,
            rank=adapter.rank,
            freeze_ratio=adapter.freeze_ratio,
            target_modules=[str(name) for name in adapter.target_modules or []],
            label_names=None if adapter.label_names is None else [str(n) for n in adapter.label_names],
            bytes=adapter.bytes,
            sha256=adapter.sha256,
            step=adapter.step if adapter.checkpoint_job_id else None,
            metrics=adapter.metrics if adapter.checkpoint_job_id else None,
        )
        created = unix_seconds_required(adapter.created_at)
        return cls(id=adapter.id, created=created, owned_by=adapter.tenant_id, lorasp=details)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
