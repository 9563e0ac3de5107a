"""The base-model registry: the `base_models` rows are what /v1/models offers and what workers and
serving load. The one home of the concept: lookups, the catalog's seed rows, loading, removal.

A row is offered to a tenant when it is `ready`, owned by the deployment (NULL owner) or by that tenant,
and (catalog rows only) named by `LORASP_ENABLED_MODELS` when that is set. Helpers never commit unless
they say so: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, TypeVar

from sqlalchemy import ColumnElement, Connection, Row, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from lorasp_core.models import CATALOG, load_base_tokenizer
from lorasp_service.jobs.status import ACTIVE_STATUSES
from lorasp_service.orm import Adapter, BaseModelRecord, Job
from lorasp_service.registry import is_plausible_id
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

READY, DOWNLOADING, FAILED = "ready", "downloading", "failed"
CATALOG_KIND = "catalog"
SOURCE_KINDS = (CATALOG_KIND, "directory", "gguf", "hub")


class BaseModelError(ValueError):
    """A registry operation refused; `param` names the field at fault, `code` the kind of problem."""

    code = "invalid_base_model"
    param = "source"


class UnknownBaseModelError(BaseModelError):
    code, param = "model_not_found", "name"


class ModelNameTakenError(BaseModelError):
    code, param = "model_exists", "name"


class InvalidModelNameError(BaseModelError):
    code, param = "invalid_model_name", "name"


class CatalogModelNotRemovableError(BaseModelError):
    code, param = "model_not_removable", "name"


class BaseModelInUseError(BaseModelError):
    code, param = "model_in_use", "name"

    def __init__(self, name: str, job_ids: list[str], adapter_ids: list[str]) -> None:
        users = []
        if job_ids:
            users.append(f"unfinished fine-tuning jobs {', '.join(job_ids)}")
        if adapter_ids:
            users.append(f"fine-tuned models {', '.join(adapter_ids)}")
        super().__init__(
            f"base model {name!r} is in use by {' and '.join(users)}; cancel or wait for the jobs and "
            "delete the models first"
        )
        self.job_ids, self.adapter_ids = job_ids, adapter_ids


def seed_catalog(session: Session) -> None:
    """Insert a row for every catalog model that has none (idempotent, safe against a concurrent seed)."""
    rows = [
        {
            "name": entry.name,
            "source": entry.name,
            "source_kind": CATALOG_KIND,
            "task": entry.task,
            "description": entry.description,
            "dtype": "float32",
            "status": READY,
            "bytes_done": 0,
        }
        for entry in CATALOG.values()
    ]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(BaseModelRecord).values(rows).on_conflict_do_nothing(index_elements=["name"])
    session.execute(statement)


class _Listed(Protocol):
    """What ordering and filtering read of a base-model row (an ORM object or a Core row)."""

    @property
    def name(self) -> str: ...
    @property
    def source_kind(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...


_Row = TypeVar("_Row", bound=_Listed)
_CATALOG_ORDER = {name: index for index, name in enumerate(CATALOG)}


def _offered(settings: Settings, row: _Listed) -> bool:
    enabled = settings.enabled_models
    return row.source_kind != CATALOG_KIND or enabled is None or row.name in enabled


def _offered_in_order(settings: Settings, rows: Iterable[_Row]) -> list[_Row]:
    """The rows `settings` offers: catalog rows first (in catalog order), then by creation and name."""
    offered = [row for row in rows if _offered(settings, row)]
    last = len(_CATALOG_ORDER)
    offered.sort(key=lambda row: (_CATALOG_ORDER.get(row.name, last), row.created_at, row.name))
    return offered


def _visible_to(tenant_id: str) -> ColumnElement[bool]:
    owner = BaseModelRecord.owner_tenant_id
    return or_(owner.is_(None), owner == tenant_id)


# Built once: /v1/models runs it on every call.
_VISIBLE = select(BaseModelRecord).where(BaseModelRecord.status == READY)


def offered_models(session: Session, settings: Settings, tenant_id: str) -> dict[str, BaseModelRecord]:
    """The ready base models the tenant may use, by name (one query)."""
    rows = _offered_in_order(settings, session.scalars(_VISIBLE.where(_visible_to(tenant_id))))
    return {row.name: row for row in rows}


# GET /v1/models reads only these columns, as Core rows (no ORM objects), on its autocommit connection.
_OFFERED_COLUMNS = select(
    BaseModelRecord.name,
    BaseModelRecord.task,
    BaseModelRecord.description,
    BaseModelRecord.source_kind,
    BaseModelRecord.created_at,
).where(BaseModelRecord.status == READY)


OfferedRow = Row[str, str, str, str, datetime]


def offered_rows(connection: Connection, settings: Settings, tenant_id: str) -> list[OfferedRow]:
    """`offered_models` for the models listing: the same rows, in the same order, as light Core rows."""
    return _offered_in_order(settings, connection.execute(_OFFERED_COLUMNS.where(_visible_to(tenant_id))))


def offered_model(session: Session, settings: Settings, tenant_id: str, name: str) -> BaseModelRecord | None:
    """The named base model if this tenant may use it (another tenant's private model is None)."""
    if not is_plausible_id(name):  # a NUL byte or surrogate must not reach the driver
        return None
    row = session.get(BaseModelRecord, name)
    if row is None or row.status != READY or not _offered(settings, row):
        return None
    if row.owner_tenant_id is not None and row.owner_tenant_id != tenant_id:
        return None
    return row


def names_a_base_model(session: Session, tenant_id: str, name: str) -> bool:
    """Whether `name` is a base model the tenant can see (of any status, enabled or not)."""
    if not is_plausible_id(name):
        return False
    row = session.get(BaseModelRecord, name)
    return row is not None and row.owner_tenant_id in (None, tenant_id)


def all_models(session: Session) -> list[BaseModelRecord]:
    return list(session.scalars(select(BaseModelRecord).order_by(BaseModelRecord.name)))


def load_source(storage: BlobStorage, row: BaseModelRecord) -> str:
    """What `load_base_model` and the skeleton take: the model store directory, else the catalog name.

    (A catalog row has a store copy once its GGUF is dequantised: `model_loading.store_catalog_gguf`.)"""
    if row.store_key is None:
        return row.name
    return str(storage.path(row.store_key))


def load_tokenizer(settings: Settings, storage: BlobStorage, row: BaseModelRecord) -> PreTrainedTokenizerBase:
    """The row's tokenizer with the row's chat template applied, as `load_model` gives it (no weights)."""
    tokenizer = load_base_tokenizer(load_source(storage, row), cache_dir=settings.model_cache_dir)
    if row.chat_template is not None:
        tokenizer.chat_template = row.chat_template
    return tokenizer


def remove_model(session: Session, storage: BlobStorage, name: str) -> list[str]:
    """Delete a registered model's row (the caller commits); returns the store keys no row uses any more.

    Refused for catalog models (LORASP_ENABLED_MODELS hides them) and while jobs or adapters use it."""
    row = session.scalars(
        select(BaseModelRecord).where(BaseModelRecord.name == name).with_for_update()
    ).one_or_none()
    if row is None:
        raise UnknownBaseModelError(f"no base model named {name!r}")
    if row.source_kind == CATALOG_KIND:
        raise CatalogModelNotRemovableError(
            f"{name!r} is a catalog model; hide it with LORASP_ENABLED_MODELS instead of removing it"
        )
    job_ids = sorted(
        session.scalars(select(Job.id).where(Job.model == name, Job.status.in_(ACTIVE_STATUSES)))
    )
    adapter_ids = sorted(session.scalars(select(Adapter.id).where(Adapter.base_model == name)))
    if job_ids or adapter_ids:
        raise BaseModelInUseError(name, job_ids, adapter_ids)
    session.delete(row)
    session.flush()
    if row.store_key is None:
        return []
    shared = select(BaseModelRecord.name).where(BaseModelRecord.store_key == row.store_key).limit(1)
    return [] if session.scalars(shared).first() is not None else [row.store_key]
