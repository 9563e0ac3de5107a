"""/v1/admin/models: operators register, list and remove base models (admin API keys only)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminKey, SessionDep, SettingsDep, StorageDep
from api.errors import ERROR_RESPONSES, ErrorResponse
from api.schemas.admin import (
    BaseModelAdminList,
    BaseModelAdminObject,
    BaseModelRemoved,
    RegisterBaseModelRequest,
)
from api.services import admin_models

router = APIRouter(
    prefix="/admin/models",
    tags=["admin"],
    dependencies=[AdminKey],
    responses={**ERROR_RESPONSES, 403: {"model": ErrorResponse, "description": "Not an admin key"}},
)


@router.get("", response_model=BaseModelAdminList)
def list_base_models(session: SessionDep) -> BaseModelAdminList:
    return BaseModelAdminList(data=admin_models.list_base_models(session))


# A plain `def`: validation and the copy into the model store block (they run in the threadpool).
@router.post("", response_model=BaseModelAdminObject, status_code=201)
def register_base_model(
    settings: SettingsDep, storage: StorageDep, request: RegisterBaseModelRequest
) -> BaseModelAdminObject:
    return admin_models.register_base_model(settings, storage, request)


@router.delete(
    "/{name}",
    response_model=BaseModelRemoved,
    responses={409: {"model": ErrorResponse, "description": "Jobs or fine-tuned models use it"}},
)
def remove_base_model(session: SessionDep, storage: StorageDep, name: str) -> BaseModelRemoved:
    admin_models.remove_base_model(session, storage, name)
    return BaseModelRemoved(name=name)
