"""/v1/models: base models enabled on this server and the tenant's fine-tuned adapters."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import (
    AppResources,
    BearerDep,
    CurrentTenant,
    ResourcesDep,
    SessionDep,
    SettingsDep,
    StartedEngineDep,
    StorageDep,
    presented_key,
    unknown_key,
)
from api.errors import ERROR_RESPONSES, ErrorResponse
from api.rate_limits import RequestLimit, charge
from api.schemas.models import ModelDeleted, ModelList, ModelObject
from api.services import models as model_service
from api.services import serving as serving_service
from lorasp_service.auth import lookup_hash

router = APIRouter(prefix="/models", tags=["models"], responses=ERROR_RESPONSES)


def _list_models_blocking(resources: AppResources, key: str) -> model_service.KeyModels:
    key_hash = lookup_hash(key)
    listing = None
    if key_hash is not None:
        with resources.read_connection() as connection:
            listing = model_service.list_models_for_key(connection, resources.settings, key_hash)
    if listing is None:
        raise unknown_key(key)
    return listing


# The hottest call (clients poll it): async, so that the key lookup, the listing and the JSON share one
# thread hop (a sync route and `CurrentTenant` would take four: dependency, endpoint, response
# validation, session close). The same authentication as `CurrentTenant`, the same response bytes.
# Its request is charged once the key's tenant is known (the listing is one statement: cheap to waste).
@router.get("", response_model=ModelList)
async def list_models(request: Request, resources: ResourcesDep, credentials: BearerDep) -> Response:
    key = presented_key(credentials)
    listing = await run_in_threadpool(_list_models_blocking, resources, key)
    await charge(request, resources, listing.tenant_id, listing.tenant_name)
    # Serialized here, once: the models are validated as they are built, so FastAPI's second
    # validation against `response_model` (kept for the schema) would only repeat it.
    return Response(ModelList(data=listing.models).model_dump_json(), media_type="application/json")


# `:path` because adapter ids look like `ft:tiny-random-llama:my-suffix:AbC123`.
@router.get("/{model_id:path}", response_model=ModelObject, dependencies=[RequestLimit])
def get_model(
    session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, model_id: str
) -> ModelObject:
    return model_service.get_model(session, settings, tenant, model_id)


@router.delete(
    "/{model_id:path}",
    response_model=ModelDeleted,
    dependencies=[RequestLimit],
    responses={
        403: {"model": ErrorResponse, "description": "Base models cannot be deleted"},
        409: {"model": ErrorResponse, "description": "An unfinished job continues from the model"},
    },
)
def delete_model(
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    tenant: CurrentTenant,
    model_id: str,
    engine: StartedEngineDep,
) -> ModelDeleted:
    deleted = model_service.delete_model(session, storage, settings, tenant, model_id)
    for adapter_id in deleted:  # a deleted adapter (or its job's checkpoint) must not stay servable
        serving_service.forget_deleted_adapter(engine, adapter_id)
    return ModelDeleted(id=deleted[0])
