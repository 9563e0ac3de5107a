"""/v1/webhooks: register, list and delete webhook endpoints; read an endpoint's delivery log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CurrentTenant, SessionDep, SettingsDep
from api.errors import ERROR_RESPONSES
from api.schemas.common import ListPage, list_page
from api.schemas.webhooks import (
    CreateWebhookRequest,
    WebhookDeliveryAttemptObject,
    WebhookEndpointDeleted,
    WebhookEndpointObject,
    WebhookEndpointWithSecret,
)
from api.services import webhooks as webhook_service
from api.services.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

router = APIRouter(prefix="/webhooks", tags=["webhooks"], responses=ERROR_RESPONSES)


@router.post("", response_model=WebhookEndpointWithSecret)
def create_webhook(
    session: SessionDep, settings: SettingsDep, tenant: CurrentTenant, request: CreateWebhookRequest
) -> WebhookEndpointWithSecret:
    """The answer carries the signing `secret` (`whsec_…`): shown this once, never listed."""
    row = webhook_service.create_endpoint(session, settings, tenant, request.url, request.events)
    return WebhookEndpointWithSecret.from_new_row(row)


@router.get("", response_model=ListPage[WebhookEndpointObject])
def list_webhooks(session: SessionDep, tenant: CurrentTenant) -> ListPage[WebhookEndpointObject]:
    rows = webhook_service.list_endpoints(session, tenant)
    return list_page([WebhookEndpointObject.from_row(row) for row in rows], [row.id for row in rows], False)


@router.get("/{webhook_id}", response_model=WebhookEndpointObject)
def get_webhook(session: SessionDep, tenant: CurrentTenant, webhook_id: str) -> WebhookEndpointObject:
    return WebhookEndpointObject.from_row(webhook_service.get_endpoint(session, tenant, webhook_id))


@router.delete("/{webhook_id}", response_model=WebhookEndpointDeleted)
def delete_webhook(session: SessionDep, tenant: CurrentTenant, webhook_id: str) -> WebhookEndpointDeleted:
    return WebhookEndpointDeleted(id=webhook_service.delete_endpoint(session, tenant, webhook_id))


@router.get("/{webhook_id}/deliveries", response_model=ListPage[WebhookDeliveryAttemptObject])
def list_deliveries(
    session: SessionDep,
    tenant: CurrentTenant,
    webhook_id: str,
    after: Annotated[str | None, Query(description="Id of the last attempt of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
) -> ListPage[WebhookDeliveryAttemptObject]:
    """Every delivery attempt to this endpoint, newest first."""
    rows, has_more = webhook_service.list_deliveries(session, tenant, webhook_id, after, limit)
    items = [WebhookDeliveryAttemptObject.from_row(row) for row in rows]
    return list_page(items, [row.id for row in rows], has_more)
