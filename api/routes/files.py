"""/v1/files: upload, list, read, download and delete dataset files."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse

from api.deps import CurrentTenant, SessionDep, SettingsDep, StorageDep
from api.errors import ERROR_RESPONSES, ErrorResponse
from api.schemas.common import ListPage, list_page
from api.schemas.files import FileDeleted, FileObject
from api.services import files as file_service

router = APIRouter(prefix="/files", tags=["files"], responses=ERROR_RESPONSES)

MAX_FILES_PAGE = 10_000


@router.post(
    "",
    response_model=FileObject,
    responses={413: {"model": ErrorResponse, "description": "Larger than max_upload_bytes"}},
)
async def upload_file(
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    tenant: CurrentTenant,
    file: Annotated[UploadFile, File(description="JSONL (chat / prompt-completion / text-label) or CSV/TSV")],
    purpose: Annotated[str, Form(description="Must be 'fine-tune'")],
) -> FileObject:
    row = await file_service.upload_file(session, storage, settings, tenant, file, purpose)
    return FileObject.from_row(row)


@router.get("", response_model=ListPage[FileObject])
def list_files(
    session: SessionDep,
    tenant: CurrentTenant,
    purpose: Annotated[str | None, Query(pattern=r"^[a-z0-9_-]{1,64}$")] = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_FILES_PAGE)] = MAX_FILES_PAGE,
    order: Annotated[
        Literal["asc", "desc"], Query(description="By created_at; newest first by default")
    ] = "desc",
) -> ListPage[FileObject]:
    rows, has_more = file_service.list_files(session, tenant, purpose, after, limit, order)
    return list_page([FileObject.from_row(row) for row in rows], [row.id for row in rows], has_more)


@router.get("/{file_id}", response_model=FileObject)
def get_file(session: SessionDep, tenant: CurrentTenant, file_id: str) -> FileObject:
    return FileObject.from_row(file_service.get_file(session, tenant, file_id))


@router.get("/{file_id}/content", response_class=FileResponse)
def get_file_content(
    session: SessionDep, storage: StorageDep, tenant: CurrentTenant, file_id: str
) -> FileResponse:
    row = file_service.get_file(session, tenant, file_id)
    return FileResponse(
        storage.path(row.storage_key),
        media_type="application/octet-stream",
        filename=row.filename,
        headers={"X-Checksum-SHA256": row.sha256},
    )


@router.delete(
    "/{file_id}",
    response_model=FileDeleted,
    responses={409: {"model": ErrorResponse, "description": "An unfinished job uses the file"}},
)
def delete_file(session: SessionDep, storage: StorageDep, tenant: CurrentTenant, file_id: str) -> FileDeleted:
    return FileDeleted(id=file_service.delete_file(session, storage, tenant, file_id))
