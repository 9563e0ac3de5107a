"""Models: enabled base models plus the tenant's adapters; adapter deletion and archive download."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session

from api.errors import APIError, not_found
from api.schemas.models import ModelObject
from api.services.catalog import base_model_object, is_base_model, offered_base_model
from lorasp_service import base_models, registry
from lorasp_service.auth import active_key_with_hash
from lorasp_service.model_checkpoints import checkpoint_adapters
from lorasp_service.orm import Adapter, ApiKey, Tenant
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

# What a model object shows of an adapter: Core rows of just these, no ORM objects or identity map.
_ADAPTER_COLUMNS = (
    Adapter.id,
    Adapter.tenant_id,
    Adapter.task,
    Adapter.base_model,
    Adapter.job_id,
    Adapter.checkpoint_job_id,
    Adapter.rank,
    Adapter.freeze_ratio,
    Adapter.target_modules,
    Adapter.label_names,
    Adapter.bytes,
    Adapter.sha256,
    Adapter.step,
    Adapter.metrics,
    Adapter.created_at,
)
# GET /v1/models runs it on every call, so the key lookup and the listing are one statement (one round
# trip): the key's row (by the unique key_hash index) outer-joined to its own tenant's adapters, newest
# first (id breaks ties for a stable order). No row: the key is unknown or revoked; a row without an
# adapter id: the tenant has none.
_MODELS_FOR_KEY = (
    select(ApiKey.tenant_id.label("key_tenant_id"), Tenant.name.label("key_tenant_name"), *_ADAPTER_COLUMNS)
    .select_from(ApiKey)
    .join(Tenant, Tenant.id == ApiKey.tenant_id)
    .outerjoin(Adapter, Adapter.tenant_id == ApiKey.tenant_id)
    .where(active_key_with_hash(bindparam("key_hash")))
    .order_by(Adapter.created_at.desc(), Adapter.id)
)


@dataclass(frozen=True)
class KeyModels:
    tenant_id: str  # the key's tenant (what the rate limit counts against)
    tenant_name: str  # (what its own rate limits are configured by)
    models: list[ModelObject]


def list_models_for_key(connection: Connection, settings: Settings, key_hash: str) -> KeyModels | None:
    """The base models offered to the key's tenant and its adapters; None if no active key has the hash.
    Two statements on one connection: the key with its adapters, then the registry's offered rows."""
    rows = connection.execute(_MODELS_FOR_KEY, {"key_hash": key_hash}).all()
    if not rows:
        return None
    adapters = [ModelObject.from_adapter(row) for row in rows if row.id is not None]
    tenant_id = rows[0].key_tenant_id
    offered = base_models.offered_rows(connection, settings, tenant_id)
    base = [ModelObject.base(row.name, row.task, row.description) for row in offered]
    return KeyModels(tenant_id, rows[0].key_tenant_name, base + adapters)


def _model_not_found(model_id: str) -> APIError:
    return not_found("model", model_id, param="model", code="model_not_found")


def get_model(session: Session, settings: Settings, tenant: Tenant, model_id: str) -> ModelObject:
    row = offered_base_model(session, settings, tenant.id, model_id)
    if row is not None:
        return base_model_object(row)
    adapter = registry.get_adapter_for_tenant(session, tenant.id, model_id)
    if adapter is None:
        raise _model_not_found(model_id)
    return ModelObject.from_adapter(adapter)


def delete_model(
    session: Session, storage: BlobStorage, settings: Settings, tenant: Tenant, model_id: str
) -> list[str]:
    """Delete the model; returns the ids deleted (the model first, then its job's checkpoints)."""
    if is_base_model(session, settings, tenant.id, model_id):
        raise APIError(
            403,
            f"Model '{model_id}' is a base model; only fine-tuned models can be deleted.",
            param="model",
            code="model_not_deletable",
        )
    adapter = registry.get_adapter_for_tenant(session, tenant.id, model_id)
    if adapter is None:
        raise _model_not_found(model_id)
    # A job's model goes with its epoch checkpoints (each also a model; deleting one alone is allowed).
    doomed = [adapter] + (checkpoint_adapters(session, adapter.job_id) if adapter.job_id else [])
    locked = _lock_for_delete(session, [row.id for row in doomed])
    if adapter.id not in locked:  # a concurrent DELETE won
        session.rollback()
        raise _model_not_found(model_id)
    doomed = [row for row in doomed if row.id in locked]
    in_use = sorted(job.id for job in registry.active_jobs_continuing_from(session, sorted(locked)))
    if in_use:
        session.rollback()
        raise _model_in_use(model_id, in_use)
    blob_keys = [key for row in doomed for key in registry.delete_adapter(session, row)]
    session.commit()
    registry.delete_blobs(storage, blob_keys)
    return [row.id for row in doomed]


def _lock_for_delete(session: Session, adapter_ids: list[str]) -> set[str]:
    """Lock the rows (FOR UPDATE, in id order) so that no job can start from them until this transaction
    ends; job creation share-locks its parent (`job_parent.lock_adapter_for_job`), so either the job is
    committed first and seen by the check that follows, or it waits and then finds no model. SQLite has
    no row locks: a no-op UPDATE takes the database's write lock first. Returns the ids still present."""
    ids = sorted(adapter_ids)
    if session.get_bind().dialect.name == "sqlite":
        touch = update(Adapter).where(Adapter.id.in_(ids)).values(task=Adapter.task)
        session.execute(touch.execution_options(synchronize_session=False))
    statement = select(Adapter.id).where(Adapter.id.in_(ids)).order_by(Adapter.id).with_for_update()
    return set(session.scalars(statement))


def _model_in_use(model_id: str, job_ids: list[str]) -> APIError:
    plural = len(job_ids) > 1
    return APIError(
        409,
        f"Model '{model_id}' is the starting point of fine-tuning job{'s' if plural else ''} "
        f"{', '.join(job_ids)}, which {'have' if plural else 'has'} not finished; cancel "
        f"{'them' if plural else 'it'} or wait for {'them' if plural else 'it'} to finish.",
        param="model",
        code="model_in_use",
    )


def adapter_archive(
    session: Session, storage: BlobStorage, tenant: Tenant, adapter_id: str
) -> tuple[Adapter, Path]:
    """The adapter's .tar.gz on disk (written now if the worker left none) and its row."""
    adapter = registry.get_adapter_for_tenant(session, tenant.id, adapter_id)
    if adapter is None:
        if base_models.names_a_base_model(session, tenant.id, adapter_id):
            raise APIError(
                400,
                f"Model '{adapter_id}' is a base model, not an adapter.",
                param="adapter_id",
                code="not_an_adapter",
            )
        raise not_found("adapter", adapter_id, param="adapter_id", code="model_not_found")
    archive_key = registry.ensure_adapter_archive(session, storage, adapter)
    session.commit()  # keeps the archive's key/size/checksum if it was just written
    return adapter, storage.path(archive_key)
