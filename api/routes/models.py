"""/v1/models: base models enabled on this server and the tenant's fine-tuned adapters."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentTenant, SessionDep, SettingsDep, StartedEngineDep, StorageDep
from api.errors import ERROR_RESPONSES, ErrorResponse
from api.schemas.models import ModelDeleted, ModelList, ModelObject
from api.services import models as model_service
from api.services import serving as serving_service

router = APIRouter(prefix="/models", tags=["models"], responses=ERROR_RESPONSES)


@router.get("", response_model=ModelList)
def list_models(session: SessionDep, settings: SettingsDep, tenant: CurrentTenant) -> ModelList:
    return ModelList(data=model_service.list_models(session, settings, tenant))


# `:path` because adapter ids look like `ft:tiny-random-llama:my-suffix:AbC123`.
@router.get("/{model_id:path}", response_model=ModelObject)
def get_model(
    session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, model_id: str
) -> ModelObject:
    return model_service.get_model(session, settings, tenant, model_id)


@router.delete(
    "/{model_id:path}",
    response_model=ModelDeleted,
    responses={
        403: {"model": ErrorResponse, "description": "Base models cannot be deleted"},
        409: {"model": ErrorResponse, "description": "An unfinished job continues from the model"},
    },
)
def delete_model(
    session: SessionDep, storage: StorageDep, settings: SettingsDep, tenant: CurrentTenant, model_id: str,
    engine: StartedEngineDep,
) -> ModelDeleted:
    deleted = model_service.delete_model(session, storage, settings, tenant, model_id)
    for adapter_id in deleted:  # a deleted adapter (or its job's checkpoint) must not stay servable
        serving_service.forget_deleted_adapter(engine, adapter_id)
    return ModelDeleted(id=deleted[0])
