"""POST /v1/adapters: register a PEFT adapter uploaded as an archive (source "upload", no job).

Steps: copy the upload to a temp file (size-capped), unpack it safely (api.services.adapter_archives),
parse it with the engine's own reader and validate it against the resident base model (rank, target
modules, shapes, task) without taking a cache slot, then store the directory and its .tar.gz atomically
and commit the Adapter row. Any failure before the commit leaves no blob and no row.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import IO

from sqlalchemy.orm import Session

from api.errors import APIError, file_too_large
from api.inference_tier.backend import ServingBackend
from api.services.adapter_archives import UnsafeArchiveError, unpack_adapter_archive
from api.services.catalog import offered_base_model
from api.services.serving import engine_errors
from lorasp_core.serving import AdapterLoadError
from lorasp_service import registry
from lorasp_service.ids import new_id
from lorasp_service.orm import Adapter, Tenant
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

logger = logging.getLogger("api.serving")

COPY_CHUNK_BYTES = 1 << 20


def _invalid(message: str, param: str = "file", code: str = "invalid_adapter") -> APIError:
    return APIError(400, message, param=param, code=code)


def _copy_capped(source: IO[bytes], target: Path, limit: int) -> None:
    size = 0
    with target.open("wb") as out:
        while chunk := source.read(COPY_CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise file_too_large(f"The upload exceeds the limit of {limit} bytes.")
            out.write(chunk)
    if size == 0:
        raise _invalid("The uploaded file is empty.", code="invalid_archive")


def _freeze_ratio(extra: dict[str, object]) -> float:
    value = extra.get("freeze_ratio", 0.0)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise _invalid(f"lorasp.json: freeze_ratio must be a number, got {value!r}.")
    if not 0.0 <= float(value) < 1.0:
        raise _invalid(f"lorasp.json: freeze_ratio must be in [0, 1), got {value}.")
    return float(value)


def upload_adapter(
    session: Session,
    storage: BlobStorage,
    settings: Settings,
    engine: ServingBackend,
    tenant: Tenant,
    upload: IO[bytes],
    base_model: str,
    suffix: str | None,
) -> Adapter:
    if offered_base_model(session, settings, tenant.id, base_model) is None:
        raise APIError(
            400,
            f"Unknown base model '{base_model}'; see GET /v1/models for the base models offered.",
            param="base_model",
            code="model_not_found",
        )
    adapter_id = registry.new_adapter_id(base_model, suffix)
    work = Path(tempfile.mkdtemp(dir=storage.root / ".tmp", prefix="adapter-upload-"))
    dir_key = f"adapters/{new_id('upload')}"
    stored = False
    adapter: Adapter | None = None
    try:
        archive = work / "upload.bin"
        _copy_capped(upload, archive, settings.max_upload_bytes)
        (work / "unpacked").mkdir()
        try:
            root = unpack_adapter_archive(
                archive, work / "unpacked", max_unpacked_bytes=settings.max_adapter_unpacked_bytes
            )
        except UnsafeArchiveError as error:
            raise _invalid(f"Rejected adapter archive: {error}.", code="invalid_archive") from error
        archive.unlink()
        with engine_errors("file"):
            parsed, labels = engine.check_adapter(adapter_id, root, base_model)
            limit = settings.serving_max_adapter_bytes
            if limit is not None and parsed.nbytes > limit:
                raise AdapterLoadError(
                    adapter_id,
                    "adapter_model.safetensors",
                    f"{parsed.nbytes} bytes of weights exceed this server's limit of {limit} bytes",
                )
        freeze_ratio = _freeze_ratio(parsed.extra)
        storage.put_dir(dir_key, root)
        stored = True
        adapter = Adapter(
            id=adapter_id,
            tenant_id=tenant.id,
            job_id=None,
            base_model=base_model,
            task=parsed.task,
            source="upload",
            storage_key=dir_key,
            rank=parsed.rank,
            freeze_ratio=freeze_ratio,
            target_modules=sorted({path.rsplit(".", 1)[-1] for path in parsed.lora}),
            label_names=None if labels is None else list(labels),
        )
        session.add(adapter)
        registry.ensure_adapter_archive(session, storage, adapter)  # writes <dir_key>.tar.gz, bytes, sha256
        session.commit()
    except BaseException:
        # Read the archive key (set once the archive is written) before the rollback expunges the row.
        orphans = [dir_key] + ([adapter.archive_key] if adapter is not None and adapter.archive_key else [])
        session.rollback()
        if stored:
            registry.delete_blobs(storage, orphans)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert adapter is not None
    logger.info(
        "adapter %r uploaded by tenant %s: %s, rank %d, %d bytes",
        adapter.id,
        tenant.id,
        adapter.task,
        adapter.rank,
        adapter.bytes,
    )
    return adapter
