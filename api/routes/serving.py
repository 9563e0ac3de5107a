"""/v1/adapters: upload a PEFT adapter archive, hot-load / unload adapters, list the resident ones."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from api.deps import CurrentTenant, EngineDep, SessionDep, SettingsDep, StorageDep
from api.errors import ERROR_RESPONSES, ErrorResponse
from api.schemas.job_requests import Suffix
from api.schemas.models import ModelObject
from api.schemas.serving import AdapterUnloaded, LoadAdapterRequest, LoadedAdapter, LoadedAdapterList
from api.services import adapter_uploads
from api.services import serving as serving_service

router = APIRouter(prefix="/adapters", tags=["adapters"], responses=ERROR_RESPONSES)


@router.post(
    "",
    response_model=ModelObject,
    responses={413: {"model": ErrorResponse, "description": "Larger than max_upload_bytes"}},
)
def upload_adapter(
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    engine: EngineDep,
    tenant: CurrentTenant,
    file: Annotated[UploadFile, File(description=".tar.gz or .zip of a PEFT adapter directory")],
    base_model: Annotated[str, Form(description="The catalog base model the adapter was trained on")],
    suffix: Annotated[Suffix | None, Form(description="Part of the new model id")] = None,
) -> ModelObject:
    adapter = adapter_uploads.upload_adapter(
        session, storage, settings, engine, tenant, file.file, base_model, suffix
    )
    return ModelObject.from_adapter(adapter)


@router.get("/loaded", response_model=LoadedAdapterList)
def list_loaded_adapters(session: SessionDep, engine: EngineDep, tenant: CurrentTenant) -> LoadedAdapterList:
    infos = serving_service.loaded_adapters(session, engine, tenant)
    return LoadedAdapterList(data=[LoadedAdapter.from_info(info) for info in infos])


@router.post(
    "/{adapter_id:path}/load",
    response_model=LoadedAdapter,
    responses={
        429: {"model": ErrorResponse, "description": "The tenant's pinned or resident quota is full"},
        503: {"model": ErrorResponse, "description": "Every slot is pinned or serving"},
    },
)
def load_adapter(
    session: SessionDep,
    storage: StorageDep,
    engine: EngineDep,
    tenant: CurrentTenant,
    adapter_id: str,
    body: LoadAdapterRequest | None = None,
) -> LoadedAdapter:
    pin = body.pin if body is not None else None
    info = serving_service.load_adapter(session, storage, engine, tenant, adapter_id, pin)
    return LoadedAdapter.from_info(info)


@router.post("/{adapter_id:path}/unload", response_model=AdapterUnloaded)
def unload_adapter(
    session: SessionDep, engine: EngineDep, tenant: CurrentTenant, adapter_id: str
) -> AdapterUnloaded:
    unloaded = serving_service.unload_adapter(session, engine, tenant, adapter_id)
    return AdapterUnloaded(id=adapter_id, unloaded=unloaded)
