"""Emitting job events: rows in the caller's transaction, Celery deliveries only once it has committed.

`emit_job_event(session, job_id, status)` is the one call the job code makes where a job becomes
succeeded / failed / cancelled. It writes a `WebhookEvent` and one pending `WebhookDelivery` per
subscribed endpoint of the job's tenant, and registers an `after_commit` hook on the session that sends
the delivery tasks: a worker never looks for a delivery that is not committed, and a rolled-back
transition sends nothing. A broker failure at that point is logged, not raised (the job's own commit has
happened); the delivery stays `pending` in the database.
"""

from __future__ import annotations

import logging
import secrets
from enum import StrEnum

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from lorasp_service.db import SETTINGS_INFO_KEY
from lorasp_service.orm import Job, utcnow
from lorasp_service.settings import Settings, get_settings
from lorasp_service.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

log = logging.getLogger(__name__)

DELIVER_WEBHOOK_TASK = "lorasp.deliver_webhook"
_PENDING_KEY = "lorasp.webhooks.pending"
_HOOKED_KEY = "lorasp.webhooks.hooked"


class WebhookEventType(StrEnum):
    JOB_SUCCEEDED = "fine_tuning.job.succeeded"
    JOB_FAILED = "fine_tuning.job.failed"
    JOB_CANCELLED = "fine_tuning.job.cancelled"
    JOB_PAUSED = "fine_tuning.job.paused"  # lorasp's: OpenAI has no pause (same shape as the others)


EVENT_TYPES: tuple[str, ...] = tuple(member.value for member in WebhookEventType)
_EVENT_FOR_STATUS = {
    "succeeded": WebhookEventType.JOB_SUCCEEDED,
    "failed": WebhookEventType.JOB_FAILED,
    "cancelled": WebhookEventType.JOB_CANCELLED,
    "paused": WebhookEventType.JOB_PAUSED,
}


def public_id(prefix: str) -> str:
    # OpenAI's webhook ids use an underscore (`evt_…`, `wh_…`), unlike the `ftjob-…` family.
    return f"{prefix}_{secrets.token_hex(16)}"


def enqueue_delivery(settings: Settings, delivery_id: str, countdown: float | None = None) -> None:
    """Send one delivery attempt to the workers (tests replace this to run attempts in-process)."""
    from lorasp_service.queue import send_task  # Celery: imported only when something is really sent

    send_task(settings, DELIVER_WEBHOOK_TASK, [delivery_id], countdown=countdown)


def emit_job_event(session: Session, job_id: str, status: str) -> list[str]:
    """Record the webhook event of a job that just reached terminal `status` (or paused); returns the
    delivery ids.

    Call it inside the transaction that makes the transition, before its commit.
    """
    event_type = _EVENT_FOR_STATUS.get(str(status))
    if event_type is None:
        raise ValueError(f"no webhook event for job status {status!r}")
    tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
    if tenant_id is None:
        return []
    endpoints = [
        endpoint
        for endpoint in session.scalars(
            select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id).order_by(WebhookEndpoint.id)
        )
        if event_type.value in endpoint.events
    ]
    if not endpoints:
        return []
    now = utcnow()
    webhook_event = WebhookEvent(
        id=public_id("evt"), tenant_id=tenant_id, type=event_type.value, data={"id": job_id}, created_at=now
    )
    session.add(webhook_event)
    deliveries = [
        WebhookDelivery(
            id=public_id("wh"), endpoint_id=endpoint.id, event_id=webhook_event.id, created_at=now
        )
        for endpoint in endpoints
    ]
    session.add_all(deliveries)
    ids = [delivery.id for delivery in deliveries]
    _send_after_commit(session, ids)
    return ids


def _send_after_commit(session: Session, delivery_ids: list[str]) -> None:
    session.info.setdefault(_PENDING_KEY, []).extend(delivery_ids)
    if not session.info.get(_HOOKED_KEY):
        event.listen(session, "after_commit", _send_pending)
        event.listen(session, "after_rollback", _drop_pending)
        session.info[_HOOKED_KEY] = True


def _session_settings(session: Session) -> Settings:
    settings = session.info.get(SETTINGS_INFO_KEY)
    return settings if isinstance(settings, Settings) else get_settings()


def _send_pending(session: Session) -> None:
    pending: list[str] = session.info.pop(_PENDING_KEY, [])
    if not pending:
        return
    settings = _session_settings(session)
    for delivery_id in pending:
        try:
            enqueue_delivery(settings, delivery_id)
        except Exception:  # noqa: BLE001 - the transition is committed; the delivery stays pending
            log.exception("could not enqueue webhook delivery %s", delivery_id)


def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)
