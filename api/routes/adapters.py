"""/v1/adapters/{id}/download: the fine-tuned adapter as a PEFT-format .tar.gz."""

from __future__ import annotations

import re

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.deps import CurrentTenant, SessionDep, StorageDep
from api.errors import ERROR_RESPONSES
from api.services import models as model_service

router = APIRouter(prefix="/adapters", tags=["adapters"], responses=ERROR_RESPONSES)


def archive_filename(adapter_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", adapter_id) + ".tar.gz"


@router.get(
    "/{adapter_id:path}/download",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/gzip": {}},
            "description": "adapter_config.json, "
            "adapter_model.safetensors and lorasp.json at the archive root",
        }
    },
)
def download_adapter(
    session: SessionDep, storage: StorageDep, tenant: CurrentTenant, adapter_id: str
) -> FileResponse:
    adapter, path = model_service.adapter_archive(session, storage, tenant, adapter_id)
    return FileResponse(
        path,
        media_type="application/gzip",
        filename=archive_filename(adapter.id),
        headers={"X-Checksum-SHA256": adapter.sha256},
    )
