"""What a new job trains from: a base model, or (continued training) one of the tenant's adapters.

A continued job keeps its parent's LoRA-SP structure (rank, target modules, freeze ratio, mask seed):
the worker loads the parent's weights into a model wrapped with that structure, and the same mask seed
on the same modules selects the same frozen entries, so they keep the parent's values. The parent's row
is share-locked until the job's transaction ends, so that a DELETE of the model cannot commit in between
(`api.services.models.delete_model` takes the exclusive lock, then looks for jobs continuing from it).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.errors import APIError
from api.services.catalog import offered_base_model
from lorasp_core import read_adapter_metadata
from lorasp_service import base_models, registry
from lorasp_service.jobs.spec import TargetModules
from lorasp_service.orm import Adapter, BaseModelRecord, Tenant
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage


@dataclass(frozen=True)
class ParentStructure:
    """The parent adapter's LoRA-SP structure and labels, as its files record them."""

    model_id: str
    rank: int
    alpha: float
    freeze_ratio: float
    mask_seed: int
    target_modules: TargetModules
    label_names: list[str] | None


@dataclass(frozen=True)
class JobBase:
    """`base_model` is what the worker loads; `parent` is set for continued training."""

    base_model: str
    task: str
    parent: ParentStructure | None = None
    # What the target-module checks build the model from (catalog name or model store directory), and
    # the registered model's default target modules (None: the engine's per-architecture defaults).
    source: str | None = None
    target_modules: tuple[str, ...] | None = None
    # The registered model's longest sequence (caps the job's max_length); None: no registered cap.
    max_length: int | None = None

    @classmethod
    def of(cls, storage: BlobStorage, row: BaseModelRecord, parent: ParentStructure | None = None) -> JobBase:
        defaults = None
        if row.source_kind != base_models.CATALOG_KIND and row.target_modules:
            defaults = tuple(str(name) for name in row.target_modules)
        source = base_models.load_source(storage, row)
        return cls(
            row.name, row.task, parent, source=source, target_modules=defaults, max_length=row.max_length
        )


def model_not_available(model: str) -> APIError:
    """The one answer for an unknown model and for another tenant's adapter (no existence leak)."""
    return APIError(
        400,
        f"Model '{model}' is not available for fine-tuning; see GET /v1/models for base models.",
        param="model",
        code="model_not_available",
    )


def _unusable_parent(model: str, why: str) -> APIError:
    return APIError(
        400,
        f"Model '{model}' cannot be fine-tuned further: {why}.",
        param="model",
        code="model_not_available",
    )


def lock_adapter_for_job(session: Session, adapter_id: str) -> Adapter | None:
    """Share-lock the adapter row until the transaction ends; None if it was deleted meanwhile.

    SQLite has no row locks: there a no-op UPDATE takes the database's write lock first (as
    `files.lock_files_for_job` does).
    """
    if session.get_bind().dialect.name == "sqlite":
        touch = update(Adapter).where(Adapter.id == adapter_id).values(task=Adapter.task)
        session.execute(touch.execution_options(synchronize_session=False))
    statement = select(Adapter).where(Adapter.id == adapter_id).with_for_update(read=True)
    return session.scalars(statement.execution_options(populate_existing=True)).one_or_none()


def resolve_job_base(
    session: Session, settings: Settings, storage: BlobStorage, tenant: Tenant, model: str
) -> JobBase:
    """The base model and (for an adapter id of the tenant) the locked parent's structure."""
    entry = offered_base_model(session, settings, tenant.id, model)
    if entry is not None:
        return JobBase.of(storage, entry)
    found = registry.get_adapter_for_tenant(session, tenant.id, model)
    adapter = lock_adapter_for_job(session, found.id) if found is not None else None
    if adapter is None:
        raise model_not_available(model)
    base = offered_base_model(session, settings, tenant.id, adapter.base_model)
    if base is None:
        raise _unusable_parent(model, f"its base model '{adapter.base_model}' is not offered for fine-tuning")
    try:
        metadata = read_adapter_metadata(storage.path(adapter.storage_key))
    except (OSError, ValueError):
        raise _unusable_parent(model, "its adapter files cannot be read") from None
    if metadata.task != base.task:
        raise _unusable_parent(model, f"it is a {metadata.task} adapter of a {base.task} base model")
    parent = ParentStructure(
        model_id=adapter.id,
        rank=metadata.r,
        alpha=metadata.lora_alpha,
        freeze_ratio=metadata.freeze_ratio,
        mask_seed=metadata.mask_seed,
        target_modules=metadata.target_modules,
        label_names=metadata.label_names if metadata.label_names is not None else adapter.label_names,
    )
    return JobBase.of(storage, base, parent)
