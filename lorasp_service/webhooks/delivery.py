"""One delivery attempt, and what comes after it: done, failed for good, or retried later.

At-least-once: the Celery task acknowledges its message only after the attempt is recorded and the next
one (if any) is enqueued, so a worker dying in between makes the broker redeliver it; a duplicate
message costs at most an extra attempt (receivers dedupe on `webhook-id`, constant across retries).

Retried (exponential backoff, `webhook_retry_base_seconds * 2**(attempt-1)` capped at
`webhook_retry_max_delay_seconds`, at most `webhook_max_attempts` attempts): 5xx, 408, 429, timeouts,
connection errors, a host that does not resolve. Not retried: other 4xx, any 3xx (redirects are never
followed), a URL that now resolves to a refused address.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import httpx
from sqlalchemy import CursorResult, select, update

from lorasp_service.db import session_scope
from lorasp_service.orm import utcnow
from lorasp_service.settings import Settings
from lorasp_service.webhooks import emit
from lorasp_service.webhooks.models import DeliveryStatus, WebhookDelivery, WebhookDeliveryAttempt
from lorasp_service.webhooks.signing import event_body, signed_headers
from lorasp_service.webhooks.urls import UnresolvableHostError, WebhookURLError, check_webhook_url

log = logging.getLogger(__name__)

RETRYABLE_STATUS_CODES = frozenset({408, 429})
USER_AGENT = "lorasp-webhooks/0.1"


@dataclass(frozen=True)
class SendResult:
    status_code: int | None
    error: str | None
    retryable: bool
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class AttemptResult:
    delivery_id: str
    attempt: int
    status: DeliveryStatus
    send: SendResult
    retry_in: float | None  # seconds until the next attempt when status is still PENDING


@dataclass(frozen=True)
class _Target:
    url: str
    secret: str
    body: str
    event_id: str
    event_type: str
    endpoint_id: str
    attempt: int


def retry_delay(settings: Settings, attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based)."""
    return float(
        min(
            settings.webhook_retry_base_seconds * 2 ** (attempt - 1), settings.webhook_retry_max_delay_seconds
        )
    )


def send_once(
    settings: Settings,
    url: str,
    secret: str,
    webhook_id: str,
    body: str,
    transport: httpx.BaseTransport | None = None,
) -> SendResult:
    """POST the signed body once, to the address the SSRF check just vetted; never follows redirects."""
    started = time.perf_counter()

    def result(status_code: int | None, error: str | None, retryable: bool) -> SendResult:
        return SendResult(status_code, error, retryable, (time.perf_counter() - started) * 1000.0)

    try:
        checked = check_webhook_url(url, allow_private_networks=settings.webhook_allow_private_networks)
    except UnresolvableHostError as error:
        return result(None, str(error), True)
    except WebhookURLError as error:
        return result(None, f"refused: {error}", False)
    original = httpx.URL(url)
    # Connect to the checked address; Host and TLS SNI (and certificate check) keep the URL's name.
    target = original.copy_with(host=str(checked.address))
    headers = {
        **signed_headers(secret, webhook_id, body),
        "host": original.netloc.decode("ascii"),
        "user-agent": USER_AGENT,
    }
    extensions = {"sni_hostname": checked.host} if checked.scheme == "https" else {}
    timeout = settings.webhook_timeout_seconds
    try:
        # trust_env=False: no proxy from the environment may take the request elsewhere.
        with (
            httpx.Client(
                follow_redirects=False, timeout=timeout, trust_env=False, transport=transport
            ) as client,
            client.stream(
                "POST", target, content=body.encode("utf-8"), headers=headers, extensions=extensions
            ) as response,
        ):
            code = response.status_code  # the body is never read: a receiver cannot make us buffer it
    except httpx.TimeoutException:
        return result(None, f"timed out after {timeout:g} s", True)
    except httpx.TransportError as error:
        return result(None, f"connection error: {type(error).__name__}: {error}", True)
    if 200 <= code < 300:
        return result(code, None, False)
    if 300 <= code < 400:
        return result(code, "redirect not followed", False)
    return result(code, None, code >= 500 or code in RETRYABLE_STATUS_CODES)


def _load(settings: Settings, delivery_id: str) -> _Target | None:
    with session_scope(settings) as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status != DeliveryStatus.PENDING:
            return None  # delivered, given up, or its endpoint was deleted: a late or duplicate message
        endpoint, event = delivery.endpoint, delivery.event
        return _Target(
            url=endpoint.url,
            secret=endpoint.secret,
            body=event_body(event),
            event_id=event.id,
            event_type=event.type,
            endpoint_id=endpoint.id,
            attempt=delivery.attempts + 1,
        )


def _record(
    settings: Settings, target: _Target, delivery_id: str, sent: SendResult, status: DeliveryStatus
) -> bool:
    """Log the attempt and move the delivery on; False when the endpoint was deleted meanwhile."""
    with session_scope(settings) as session:
        # The UPDATE first: it locks the delivery row (a concurrent endpoint delete waits for this commit),
        # and no row means the endpoint and its deliveries are gone.
        finished = None if status == DeliveryStatus.PENDING else utcnow()
        changed = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(attempts=WebhookDelivery.attempts + 1, status=status.value, finished_at=finished)
            .execution_options(synchronize_session=False)
        )
        if cast("CursorResult[Any]", changed).rowcount != 1:
            session.rollback()
            return False
        session.add(
            WebhookDeliveryAttempt(
                id=emit.public_id("whatt"),
                delivery_id=delivery_id,
                endpoint_id=target.endpoint_id,
                event_id=target.event_id,
                event_type=target.event_type,
                attempt=target.attempt,
                status_code=sent.status_code,
                error=sent.error,
                duration_ms=round(sent.duration_ms, 3),
                created_at=utcnow(),
            )
        )
        session.commit()
        return True


def attempt_delivery(
    settings: Settings, delivery_id: str, transport: httpx.BaseTransport | None = None
) -> AttemptResult | None:
    """Make the next attempt of a pending delivery and record it; None when nothing is left to do."""
    target = _load(settings, delivery_id)
    if target is None:
        return None
    # No transaction is held open while the receiver takes its time.
    sent = send_once(settings, target.url, target.secret, delivery_id, target.body, transport)
    if sent.ok:
        status = DeliveryStatus.DELIVERED
    elif sent.retryable and target.attempt < settings.webhook_max_attempts:
        status = DeliveryStatus.PENDING
    else:
        status = DeliveryStatus.FAILED
    if not _record(settings, target, delivery_id, sent, status):
        log.info("webhook %s: endpoint deleted during attempt %d", delivery_id, target.attempt)
        return None
    retry_in = retry_delay(settings, target.attempt) if status == DeliveryStatus.PENDING else None
    log.info(
        "webhook %s attempt %d: %s (%s)",
        delivery_id,
        target.attempt,
        status.value,
        sent.status_code if sent.status_code is not None else sent.error,
    )
    return AttemptResult(delivery_id, target.attempt, status, sent, retry_in)


def deliver_and_schedule(settings: Settings, delivery_id: str) -> str:
    """What the Celery task does: one attempt, then the next one enqueued with its backoff delay."""
    result = attempt_delivery(settings, delivery_id)
    if result is None:
        return "nothing_to_do"
    if result.retry_in is not None:
        emit.enqueue_delivery(settings, delivery_id, countdown=result.retry_in)
    return result.status.value


def pending_delivery_ids(settings: Settings) -> list[str]:
    """Deliveries not yet delivered nor given up: what a lost message (a broker down at commit, a worker
    killed with a retry in hand) would leave behind. A worker re-sends them when it starts; a duplicate
    costs at most an extra attempt."""
    with session_scope(settings) as session:
        statement = (
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == DeliveryStatus.PENDING.value)
            .order_by(WebhookDelivery.created_at)
        )
        return list(session.scalars(statement))
