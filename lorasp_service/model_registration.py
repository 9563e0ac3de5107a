"""Registering a base model: check the source, copy it into the model store once, record its row.

The row is inserted `downloading` before the copy (so a listing shows the copy's progress in
`bytes_done`) and becomes `ready` at the end. A source that fails validation leaves no row (the name
stays free); a copy or download that fails for another reason leaves the row `failed` with the reason.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from lorasp_core.models import TaskType
from lorasp_service.base_models import (
    DOWNLOADING,
    FAILED,
    READY,
    BaseModelError,
    InvalidModelNameError,
    ModelNameTakenError,
)
from lorasp_service.db import session_scope
from lorasp_service.model_store import (
    Progress,
    dequantise_into_staging,
    download_from_hub,
    store_directory,
)
from lorasp_service.model_validation import validate_directory
from lorasp_service.orm import BaseModelRecord, Tenant
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DTYPES = ("float32", "bfloat16", "float16")
# How often the row's bytes_done is written while copying (one short transaction each).
PROGRESS_WRITE_SECONDS = 1.0


class UnknownTenantError(BaseModelError):
    code, param = "tenant_not_found", "tenant"


class InvalidOptionError(BaseModelError):
    code = "invalid_value"

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Registration:
    name: str
    source: str  # a directory, gguf:FILE or hf:ORG/REPO[@REV]
    task: TaskType | None = None
    dtype: str = "float32"
    max_length: int | None = None
    chat_template: str | None = None
    target_modules: list[str] | None = field(default=None)
    tenant: str | None = None  # tenant name: a private model of that tenant


def source_kind(source: str) -> str:
    if source.startswith("hf:"):
        return "hub"
    if source.startswith("gguf:"):
        return "gguf"
    return "directory"


def register(
    settings: Settings, storage: BlobStorage, request: Registration, progress: Progress | None = None
) -> BaseModelRecord:
    """Validate, store and record the model; raises a BaseModelError subclass naming what is wrong."""
    kind = _check_request(request)
    with session_scope(settings) as session:
        if session.get(BaseModelRecord, request.name) is not None:
            raise ModelNameTakenError(f"a base model named {request.name!r} exists already")
        owner = None
        if request.tenant is not None:
            tenant = session.scalars(select(Tenant).where(Tenant.name == request.tenant)).one_or_none()
            if tenant is None:
                raise UnknownTenantError(f"no tenant named {request.tenant!r}")
            owner = tenant.id
    staged: Path | None = None  # a folder this registration made (hub download, dequantised GGUF)
    try:
        if kind == "hub":
            staged = download_from_hub(storage, request.source, settings.allow_hub_downloads)
        elif kind == "gguf":
            staged = dequantise_into_staging(storage, request.source, request.name)
        directory = staged or Path(request.source).expanduser()
        checked = validate_directory(
            directory,
            task=request.task,
            chat_template=request.chat_template,
            target_modules=request.target_modules,
        )
        if request.max_length is not None and checked.max_length and request.max_length > checked.max_length:
            raise InvalidOptionError(
                "max_length", f"max_length {request.max_length} is above the model's {checked.max_length}"
            )
        row = BaseModelRecord(
            name=request.name,
            source=request.source,
            source_kind=kind,
            task=checked.task,
            description=f"{checked.architecture}, {checked.parameter_count:,} parameters",
            architecture=checked.architecture,
            parameter_count=checked.parameter_count,
            dtype=request.dtype,
            max_length=request.max_length or checked.max_length,
            chat_template=request.chat_template,
            target_modules=checked.target_modules,
            label_names=checked.label_names,
            status=DOWNLOADING,
            bytes_done=0,
            owner_tenant_id=owner,
        )
        _insert(settings, row)
        try:
            stored = store_directory(storage, directory, _progress_writer(settings, request.name, progress))
        except Exception as error:
            _update(settings, request.name, status=FAILED, status_reason=f"copy failed: {error}")
            raise
        _update(
            settings,
            request.name,
            status=READY,
            sha256=stored.sha256,
            store_key=stored.key,
            bytes=stored.bytes,
            bytes_done=stored.bytes,
        )
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
    with session_scope(settings) as session:
        final = session.get(BaseModelRecord, request.name)
        assert final is not None
        return final


def _check_request(request: Registration) -> str:
    if not NAME_PATTERN.fullmatch(request.name):
        raise InvalidModelNameError(
            f"invalid name {request.name!r}: 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    if request.dtype not in DTYPES:
        raise InvalidOptionError("dtype", f"dtype must be one of {list(DTYPES)}, got {request.dtype!r}")
    if request.max_length is not None and request.max_length < 1:
        raise InvalidOptionError("max_length", f"max_length must be >= 1, got {request.max_length}")
    return source_kind(request.source)


def _insert(settings: Settings, row: BaseModelRecord) -> None:
    with session_scope(settings) as session:
        session.add(row)
        try:
            session.commit()
        except IntegrityError:  # registered concurrently under the same name
            raise ModelNameTakenError(f"a base model named {row.name!r} exists already") from None


def _update(settings: Settings, name: str, **values: object) -> None:
    with session_scope(settings) as session:
        session.execute(update(BaseModelRecord).where(BaseModelRecord.name == name).values(**values))
        session.commit()


def _progress_writer(settings: Settings, name: str, progress: Progress | None) -> Progress:
    last = [0.0]

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress(done, total)
        now = time.monotonic()
        if now - last[0] >= PROGRESS_WRITE_SECONDS:
            last[0] = now
            _update(settings, name, bytes_done=done, bytes=total)

    return report
