"""The webhook delivery task: one attempt per message; the next attempt is a new message with a countdown."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import worker_ready
from sqlalchemy.exc import OperationalError

from lorasp_service.settings import get_settings
from lorasp_service.webhooks import DELIVER_WEBHOOK_TASK, emit
from lorasp_service.webhooks.delivery import deliver_and_schedule, pending_delivery_ids
from worker.app import celery_app

log = logging.getLogger(__name__)

MAX_TRANSIENT_RETRIES = 5


@celery_app.task(  # type: ignore[untyped-decorator]
    name=DELIVER_WEBHOOK_TASK,
    bind=True,
    # Acknowledged only once the attempt is recorded and the next one enqueued: at-least-once.
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_TRANSIENT_RETRIES,
)
def deliver_webhook(self: Task, delivery_id: str) -> str:
    """Attempt delivery `delivery_id` once; a no-op when it is already delivered, failed or deleted."""
    try:
        return deliver_and_schedule(get_settings(), delivery_id)
    except OperationalError as error:  # a DB restart or a locked SQLite: try again soon
        countdown = min(60, 2 * 2**self.request.retries)
        log.warning(
            "webhook %s: transient database error, retrying in %d s: %s", delivery_id, countdown, error
        )
        raise self.retry(exc=error, countdown=countdown) from error


@worker_ready.connect  # type: ignore[untyped-decorator]
def _resend_pending_deliveries(**_: Any) -> None:
    """Re-send deliveries whose message was lost (broker down when their job ended, worker killed)."""
    settings = get_settings()
    try:
        delivery_ids = pending_delivery_ids(settings)
    except Exception as error:  # noqa: BLE001 - a missing schema must not stop the worker
        log.warning("could not look for pending webhook deliveries: %s", error)
        return
    for delivery_id in delivery_ids:
        log.info("re-sending pending webhook delivery %s", delivery_id)
        emit.enqueue_delivery(settings, delivery_id)
