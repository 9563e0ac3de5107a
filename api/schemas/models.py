"""Model objects: enabled base models of the catalog and the tenant's fine-tuned adapters."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from api.schemas.common import unix_seconds_required

# Base models have no creation date of their own; a fixed one keeps responses stable (2025-01-01).
BASE_MODEL_CREATED = 1735689600
BASE_MODEL_OWNER = "lorasp"


class AdapterFields(Protocol):
    """What a model object shows of an adapter: an `orm.Adapter`, or a Core row of those columns."""

    @property
    def id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def base_model(self) -> str: ...
    @property
    def job_id(self) -> str | None: ...
    @property
    def checkpoint_job_id(self) -> str | None: ...
    @property
    def rank(self) -> int: ...
    @property
    def freeze_ratio(self) -> float: ...
    @property
    def target_modules(self) -> list[Any]: ...
    @property
    def label_names(self) -> list[Any] | None: ...
    @property
    def bytes(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def step(self) -> int | None: ...
    @property
    def metrics(self) -> dict[str, Any] | None: ...
    @property
    def created_at(self) -> datetime: ...


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
    def from_adapter(cls, adapter: AdapterFields) -> ModelObject:
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
