"""Dataset files: streamed to blob storage, checksummed, validated structurally, then registered.

A rejected upload (too large, bad purpose, invalid dataset) leaves nothing behind: no blob, no row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import PurePath
from typing import Literal

from fastapi import UploadFile
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.errors import APIError, file_too_large, not_found
from api.services.paging import fetch_page, newer_first_after, older_first_after
from lorasp_core.data import DatasetReport, validate_dataset
from lorasp_service import registry
from lorasp_service.ids import new_id
from lorasp_service.orm import File, Tenant
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage, BlobTooLargeError

FINE_TUNE_PURPOSE = "fine-tune"
UPLOAD_CHUNK_BYTES = 1 << 20
# Extensions kept on the stored blob: the dataset reader picks JSONL / CSV / TSV by extension.
KNOWN_EXTENSIONS = frozenset({".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".txt"})


def check_purpose(purpose: str) -> None:
    if purpose != FINE_TUNE_PURPOSE:
        raise APIError(
            400,
            f"Invalid purpose '{purpose}': this server accepts only '{FINE_TUNE_PURPOSE}'.",
            param="purpose",
            code="invalid_purpose",
        )


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(UPLOAD_CHUNK_BYTES):
        yield chunk


def _clean_filename(raw: str | None) -> str:
    name = PurePath((raw or "").replace("\\", "/")).name
    # Only printable characters reach the database (PostgreSQL text cannot hold NUL).
    name = "".join(char for char in name if char.isprintable()).strip()
    return (name or "upload.jsonl")[:255]


def _storage_key(tenant: Tenant, file_id: str, filename: str) -> str:
    extension = PurePath(filename).suffix.lower()
    return f"files/{tenant.id}/{file_id}{extension if extension in KNOWN_EXTENSIONS else ''}"


async def upload_file(
    session: Session,
    storage: BlobStorage,
    settings: Settings,
    tenant: Tenant,
    upload: UploadFile,
    purpose: str,
) -> File:
    check_purpose(purpose)
    filename = _clean_filename(upload.filename)
    file_id = new_id("file")
    key = _storage_key(tenant, file_id, filename)
    try:
        size, sha256 = await storage.write_stream(key, _chunks(upload), settings.max_upload_bytes)
    except BlobTooLargeError as error:
        raise file_too_large(f"File '{filename}' is larger than the limit of {error.limit} bytes.") from error
    try:
        report: DatasetReport = await run_in_threadpool(validate_dataset, storage.path(key))
        if not report.ok:
            raise APIError(
                400,
                f"Invalid file '{filename}': {report.summary()}",
                param="file",
                code="invalid_file_format",
            )
        stats = report.to_dict()
        stats.pop("problems", None)
        row = File(
            id=file_id,
            tenant_id=tenant.id,
            filename=filename,
            purpose=purpose,
            bytes=size,
            sha256=sha256,
            storage_key=key,
            status="processed",
            data_format=None if report.format is None else report.format.value,
            stats=stats,
        )
        session.add(row)
        session.commit()
    except BaseException:
        storage.delete(key)
        raise
    return row


def get_file(session: Session, tenant: Tenant, file_id: str) -> File:
    row = registry.get_file_for_tenant(session, tenant.id, file_id)
    if row is None:
        raise not_found("file", file_id, param="file_id")
    return row


def list_files(
    session: Session,
    tenant: Tenant,
    purpose: str | None,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"] = "desc",
) -> tuple[list[File], bool]:
    """The tenant's files of `purpose` (all if None), by creation time: newest first unless order="asc"."""
    statement = select(File).where(File.tenant_id == tenant.id, File.deleted_at.is_(None))
    if purpose is not None:
        statement = statement.where(File.purpose == purpose)
    past_cursor = older_first_after if order == "asc" else newer_first_after
    if after is not None:
        cursor = registry.get_file_for_tenant(session, tenant.id, after)
        if cursor is None:
            raise not_found("file", after, param="after")
        statement = statement.where(past_cursor(File.created_at, File.id, cursor.created_at, cursor.id))
    if order == "asc":
        statement = statement.order_by(File.created_at.asc(), File.id.asc())
    else:
        statement = statement.order_by(File.created_at.desc(), File.id.desc())
    return fetch_page(session, statement, limit)


def delete_file(session: Session, storage: BlobStorage, tenant: Tenant, file_id: str) -> str:
    row = get_file(session, tenant, file_id)
    active_jobs = registry.active_jobs_using_file(session, row.id)
    if active_jobs:
        raise APIError(
            400,
            f"File '{file_id}' is used by fine-tuning job '{active_jobs[0].id}' which has not finished; "
            "cancel the job or wait for it to finish.",
            param="file_id",
            code="file_in_use",
        )
    blob_keys = registry.soft_delete_file(session, row)
    session.commit()
    registry.delete_blobs(storage, blob_keys)
    return row.id
