"""Webhook endpoints (`webhook_endpoint`) and their delivery log (`webhook_delivery_attempt`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import unix_seconds_required
from lorasp_service.webhooks.models import WebhookDeliveryAttempt, WebhookEndpoint
from lorasp_service.webhooks.urls import MAX_URL_LENGTH


class CreateWebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL_LENGTH, description="http(s) URL that receives the events")
    events: list[str] = Field(description="Event types: fine_tuning.job.{succeeded,failed,cancelled}")


class WebhookEndpointObject(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str]
    created_at: int

    @classmethod
    def from_row(cls, row: WebhookEndpoint) -> WebhookEndpointObject:
        return cls(
            id=row.id, url=row.url, events=list(row.events), created_at=unix_seconds_required(row.created_at)
        )


class WebhookEndpointWithSecret(WebhookEndpointObject):
    """Answered once, by the POST that creates the endpoint: the only time the secret is shown."""

    secret: str

    @classmethod
    def from_new_row(cls, row: WebhookEndpoint) -> WebhookEndpointWithSecret:
        return cls(**WebhookEndpointObject.from_row(row).model_dump(), secret=row.secret)


class WebhookEndpointDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class WebhookDeliveryAttemptObject(BaseModel):
    id: str
    object: Literal["webhook_delivery_attempt"] = "webhook_delivery_attempt"
    webhook_id: str = Field(description="The `webhook-id` header: the same on every attempt of a delivery")
    event_id: str
    event_type: str
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: float
    created_at: int

    @classmethod
    def from_row(cls, row: WebhookDeliveryAttempt) -> WebhookDeliveryAttemptObject:
        return cls(
            id=row.id,
            webhook_id=row.delivery_id,
            event_id=row.event_id,
            event_type=row.event_type,
            attempt=row.attempt,
            status_code=row.status_code,
            error=row.error,
            duration_ms=row.duration_ms,
            created_at=unix_seconds_required(row.created_at),
        )
