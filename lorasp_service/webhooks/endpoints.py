"""A tenant's webhook endpoints and their delivery log: register, list, delete, read attempts.

Errors are typed (`InvalidEventTypeError`, `NoEventTypesError`, `urls.WebhookURLError`); the API turns
them into 400s naming the field. Another tenant's endpoint is simply not found.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from lorasp_service.orm import utcnow
from lorasp_service.settings import Settings
from lorasp_service.webhooks.emit import EVENT_TYPES, public_id
from lorasp_service.webhooks.models import WebhookDeliveryAttempt, WebhookEndpoint
from lorasp_service.webhooks.signing import new_secret
from lorasp_service.webhooks.urls import check_webhook_url


class NoEventTypesError(ValueError):
    """`events` is empty."""


class InvalidEventTypeError(ValueError):
    """`events[index]` names no known event type."""

    def __init__(self, index: int, name: str) -> None:
        super().__init__(f"unknown event type '{name}'; known types: {', '.join(EVENT_TYPES)}")
        self.index, self.name = index, name


def clean_event_types(events: Sequence[str]) -> list[str]:
    """Validated, duplicates removed, in the order given."""
    if not events:
        raise NoEventTypesError("at least one event type is needed")
    cleaned: list[str] = []
    for index, name in enumerate(events):
        if name not in EVENT_TYPES:
            raise InvalidEventTypeError(index, name)
        if name not in cleaned:
            cleaned.append(name)
    return cleaned


def create_endpoint(
    session: Session, settings: Settings, tenant_id: str, url: str, events: Sequence[str]
) -> WebhookEndpoint:
    """Validate and register an endpoint (committed); its `secret` is readable on the returned row."""
    event_types = clean_event_types(events)
    check_webhook_url(url, allow_private_networks=settings.webhook_allow_private_networks)
    endpoint = WebhookEndpoint(
        id=public_id("we"),
        tenant_id=tenant_id,
        url=url,
        events=event_types,
        secret=new_secret(),
        created_at=utcnow(),
    )
    session.add(endpoint)
    session.commit()
    return endpoint


def get_endpoint(session: Session, tenant_id: str, endpoint_id: str) -> WebhookEndpoint | None:
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    return endpoint if endpoint is not None and endpoint.tenant_id == tenant_id else None


def list_endpoints(session: Session, tenant_id: str) -> list[WebhookEndpoint]:
    statement = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant_id)
        .order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id.desc())
    )
    return list(session.scalars(statement))


def delete_endpoint(session: Session, tenant_id: str, endpoint_id: str) -> bool:
    """Deletes the endpoint with its deliveries and log (pending attempts then find nothing to do)."""
    endpoint = get_endpoint(session, tenant_id, endpoint_id)
    if endpoint is None:
        return False
    session.delete(endpoint)
    session.commit()
    return True


def list_attempts(
    session: Session, endpoint: WebhookEndpoint, after: str | None, limit: int
) -> tuple[list[WebhookDeliveryAttempt], bool] | None:
    """Newest first; None when the `after` cursor is not an attempt of this endpoint."""
    statement = select(WebhookDeliveryAttempt).where(WebhookDeliveryAttempt.endpoint_id == endpoint.id)
    if after is not None:
        cursor = session.scalars(
            select(WebhookDeliveryAttempt).where(
                WebhookDeliveryAttempt.id == after, WebhookDeliveryAttempt.endpoint_id == endpoint.id
            )
        ).first()
        if cursor is None:
            return None
        statement = statement.where(WebhookDeliveryAttempt.seq < cursor.seq)
    rows = list(session.scalars(statement.order_by(WebhookDeliveryAttempt.seq.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
