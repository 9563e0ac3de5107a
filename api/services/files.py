"""Dataset files: streamed to blob storage, checksummed, validated structurally, then registered.

A rejected upload (too large, bad purpose, a line over the limit, invalid dataset) leaves nothing
behind: no blob, no row. Deleting a file and creating a job on it are serialised by row locks on the
file (`lock_files_for_job` / `delete_file`): either the job exists first and the delete is refused, or
the delete wins and the job creation sees no file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Literal

from fastapi import UploadFile
from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.errors import APIError, file_too_large, not_found
from api.services.paging import fetch_page, newer_first_after, older_first_after
from lorasp_core.data import DatasetReport, validate_dataset
from lorasp_core.data.lines import LineLengthGuard, line_too_long_reason
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


async def _checked_chunks(upload: UploadFile, filename: str, max_line_bytes: int) -> AsyncIterator[bytes]:
    """The upload's chunks, refusing it at the first line over the limit (before the rest is stored)."""
    guard = LineLengthGuard(max_line_bytes)
    while chunk := await upload.read(UPLOAD_CHUNK_BYTES):
        line = guard.feed(chunk)
        if line is not None:
            raise APIError(
                400,
                f"Invalid file '{filename}': line {line}: {line_too_long_reason(max_line_bytes)}.",
                param="file",
                code="invalid_file_format",
            )
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
        chunks = _checked_chunks(upload, filename, settings.max_line_bytes_limit)
        size, sha256 = await storage.write_stream(key, chunks, settings.max_upload_bytes)
    except BlobTooLargeError as error:
        raise file_too_large(f"File '{filename}' is larger than the limit of {error.limit} bytes.") from error
    try:
        report: DatasetReport = await run_in_threadpool(
            validate_dataset, storage.path(key), max_line_bytes=settings.max_line_bytes_limit
        )
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


def lock_files_for_job(
    session: Session, tenant_id: str, file_ids: Mapping[str, str | None]
) -> dict[str, File]:
    """Share-lock the files a new job will use (keyed by request parameter; None values are skipped)
    until the job's transaction ends, so that no DELETE of them can commit in between.

    A file deleted meanwhile is a 404 naming the parameter. FOR SHARE lets concurrent job creations on
    one file proceed together; only `delete_file`'s FOR UPDATE waits for them (and then sees the jobs).
    SQLite has no row locks: there a no-op UPDATE of the row takes the database's write lock first.
    """
    locked: dict[str, File] = {}
    sqlite = session.get_bind().dialect.name == "sqlite"
    # a fixed order, so two transactions never wait on each other's locks
    for param, file_id in sorted(file_ids.items()):
        if file_id is None:
            continue
        row = None
        if registry.is_plausible_id(file_id):
            live = (File.id == file_id, File.tenant_id == tenant_id, File.deleted_at.is_(None))
            if sqlite:
                touch = update(File).where(*live).values(status=File.status)
                session.execute(touch.execution_options(synchronize_session=False))
            row = session.scalars(select(File).where(*live).with_for_update(read=True)).one_or_none()
        if row is None:
            raise not_found("file", file_id, param=param)
        locked[param] = row
    return locked


def _file_in_use(file_id: str, job_ids: list[str]) -> APIError:
    plural = len(job_ids) > 1
    return APIError(
        409,
        f"File '{file_id}' is used by fine-tuning job{'s' if plural else ''} {', '.join(job_ids)}, which "
        f"{'have' if plural else 'has'} not finished; cancel {'them' if plural else 'it'} or wait for "
        f"{'them' if plural else 'it'} to finish.",
        param="file_id",
        code="file_in_use",
    )


def delete_file(session: Session, storage: BlobStorage, tenant: Tenant, file_id: str) -> str:
    """One transaction: lock the row, mark it deleted, refuse (roll back) while an unfinished job uses
    the file.

    Of concurrent DELETEs exactly one succeeds: the others wait on the row lock and then no longer find
    the file (PostgreSQL re-checks `deleted_at IS NULL` on the locked row), so they answer 404. The
    conditional UPDATE gives the same single winner on SQLite, which ignores FOR UPDATE; the jobs are
    read after it, under the write lock, so a job committed meanwhile is seen on both databases.
    """
    row = None
    if registry.is_plausible_id(file_id):
        row = session.scalars(
            select(File)
            .where(File.id == file_id, File.tenant_id == tenant.id, File.deleted_at.is_(None))
            .with_for_update()
        ).one_or_none()
    if row is None:
        raise not_found("file", file_id, param="file_id")
    marked = session.execute(
        update(File)
        .where(File.id == row.id, File.deleted_at.is_(None))
        .values(deleted_at=datetime.now(UTC))
        .execution_options(synchronize_session=False)
    )
    assert isinstance(marked, CursorResult)
    if marked.rowcount != 1:
        session.rollback()
        raise not_found("file", file_id, param="file_id")
    active = sorted(
        job.id for job in registry.active_jobs_using_file(session, row.id) if job.tenant_id == tenant.id
    )
    if active:
        session.rollback()
        raise _file_in_use(file_id, active)
    session.commit()
    # after the commit: the database never points at a missing blob
    registry.delete_blobs(storage, [row.storage_key])
    return row.id
