"""Webhook endpoints for the API: the lorasp_service.webhooks operations, typed errors made 400 / 404."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from api.errors import APIError, not_found
from lorasp_service.orm import Tenant
from lorasp_service.settings import Settings
from lorasp_service.webhooks import endpoints
from lorasp_service.webhooks.models import WebhookDeliveryAttempt, WebhookEndpoint
from lorasp_service.webhooks.urls import WebhookURLError


def create_endpoint(
    session: Session, settings: Settings, tenant: Tenant, url: str, events: Sequence[str]
) -> WebhookEndpoint:
    try:
        return endpoints.create_endpoint(session, settings, tenant.id, url, events)
    except endpoints.InvalidEventTypeError as error:
        raise APIError(
            400,
            f"Invalid value for 'events[{error.index}]': {error}.",
            param=f"events[{error.index}]",
            code="invalid_event_type",
        ) from error
    except endpoints.NoEventTypesError as error:
        raise APIError(
            400, f"Invalid value for 'events': {error}.", param="events", code="invalid_event_type"
        ) from error
    except WebhookURLError as error:
        raise APIError(400, f"Invalid value for 'url': {error}.", param="url", code="invalid_url") from error


def get_endpoint(session: Session, tenant: Tenant, endpoint_id: str) -> WebhookEndpoint:
    endpoint = endpoints.get_endpoint(session, tenant.id, endpoint_id)
    if endpoint is None:
        raise not_found("webhook endpoint", endpoint_id, param="webhook_id")
    return endpoint


def list_endpoints(session: Session, tenant: Tenant) -> list[WebhookEndpoint]:
    return endpoints.list_endpoints(session, tenant.id)


def delete_endpoint(session: Session, tenant: Tenant, endpoint_id: str) -> str:
    if not endpoints.delete_endpoint(session, tenant.id, endpoint_id):
        raise not_found("webhook endpoint", endpoint_id, param="webhook_id")
    return endpoint_id


def list_deliveries(
    session: Session, tenant: Tenant, endpoint_id: str, after: str | None, limit: int
) -> tuple[list[WebhookDeliveryAttempt], bool]:
    page = endpoints.list_attempts(session, get_endpoint(session, tenant, endpoint_id), after, limit)
    if page is None:
        raise not_found("delivery attempt", after or "", param="after")
    return page
