"""Webhook delivery: retries with growing delays on 5xx / 408 / 429 / timeouts / refused connections and
not on other 4xx, no redirects, the address re-checked at delivery, the delivery log over HTTP, and what
happens to deliveries whose endpoint is deleted or whose message the broker refused."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from api_helpers import assert_error
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from webhook_fixtures import HOOKS, SentDeliveries, cancel, queued_job, register
from webhook_receiver import running_receiver

from lorasp_service.settings import Settings
from lorasp_service.webhooks import emit
from lorasp_service.webhooks.delivery import deliver_and_schedule, pending_delivery_ids
from lorasp_service.webhooks.models import WebhookDelivery, WebhookEndpoint


def test_a_receiver_failing_twice_gets_the_event_three_times_with_growing_delays(
    private_client: TestClient,
    hook_tenant: dict[str, str],
    private_settings: Settings,
    deliveries: SentDeliveries,
) -> None:
    with running_receiver(statuses=[500, 503]) as receiver:
        endpoint = register(private_client, hook_tenant, receiver.url).json()
        cancel(private_client, hook_tenant, queued_job(private_client, hook_tenant))
        assert deliveries.run_all(private_settings) == ["pending", "pending", "delivered"]
        first, second, third = receiver.wait_for(3, 5)

    assert first.body == second.body == third.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == third.headers["webhook-id"]
    gap1, gap2 = second.at - first.at, third.at - second.at
    assert gap1 >= 0.2 and gap2 >= 0.4 and gap2 > gap1, (gap1, gap2)  # base 0.2 s, doubling

    log = private_client.get(f"{HOOKS}/{endpoint['id']}/deliveries", headers=hook_tenant).json()["data"]
    assert [entry["attempt"] for entry in log] == [3, 2, 1]
    assert [entry["status_code"] for entry in log] == [200, 503, 500]
    event_id = json.loads(first.body)["id"]
    assert {entry["event_id"] for entry in log} == {event_id}
    assert {entry["webhook_id"] for entry in log} == {first.headers["webhook-id"]}
    assert all(
        entry["event_type"] == "fine_tuning.job.cancelled" and entry["duration_ms"] > 0 for entry in log
    )
    page = private_client.get(
        f"{HOOKS}/{endpoint['id']}/deliveries",
        headers=hook_tenant,
        params={"limit": 2, "after": log[0]["id"]},
    ).json()
    assert [entry["attempt"] for entry in page["data"]] == [2, 1] and page["has_more"] is False
    unknown = private_client.get(
        f"{HOOKS}/{endpoint['id']}/deliveries", headers=hook_tenant, params={"after": "whatt_x"}
    )
    assert_error(unknown, 404, param="after")


@pytest.mark.parametrize(
    ("statuses", "outcomes"),
    [
        ([404], ["failed"]),  # a client error is the receiver's answer: not retried
        ([410], ["failed"]),
        ([408, 200], ["pending", "delivered"]),
        ([429, 200], ["pending", "delivered"]),
        ([500, 500, 500], ["pending", "failed"]),  # webhook_max_attempts=2 below
    ],
)
def test_which_answers_are_retried(
    private_client: TestClient,
    hook_tenant: dict[str, str],
    private_settings: Settings,
    deliveries: SentDeliveries,
    statuses: list[int],
    outcomes: list[str],
) -> None:
    settings = private_settings.model_copy(
        update={"webhook_max_attempts": 2, "webhook_retry_base_seconds": 0.01}
    )
    with running_receiver(statuses=list(statuses)) as receiver:
        register(private_client, hook_tenant, receiver.url)
        cancel(private_client, hook_tenant, queued_job(private_client, hook_tenant))
        assert deliveries.run_all(settings) == outcomes
        assert len(receiver.requests) == len(outcomes)


def test_redirects_are_not_followed(
    private_client: TestClient,
    hook_tenant: dict[str, str],
    private_settings: Settings,
    deliveries: SentDeliveries,
) -> None:
    with running_receiver(statuses=[302]) as receiver:
        receiver.redirect_to = receiver.url + "/elsewhere"
        endpoint = register(private_client, hook_tenant, receiver.url + "/hook").json()
        cancel(private_client, hook_tenant, queued_job(private_client, hook_tenant))
        assert deliveries.run_all(private_settings) == ["failed"]  # a failed delivery, not retried
        assert [request.path for request in receiver.requests] == ["/hook"]
    (entry,) = private_client.get(f"{HOOKS}/{endpoint['id']}/deliveries", headers=hook_tenant).json()["data"]
    assert entry["status_code"] == 302 and entry["error"] == "redirect not followed"


def test_timeouts_and_refused_connections_are_retried(
    private_client: TestClient,
    hook_tenant: dict[str, str],
    private_settings: Settings,
    deliveries: SentDeliveries,
) -> None:
    settings = private_settings.model_copy(
        update={"webhook_timeout_seconds": 0.3, "webhook_max_attempts": 2, "webhook_retry_base_seconds": 0.01}
    )
    with running_receiver(delay_seconds=1.0) as receiver:
        slow = register(private_client, hook_tenant, receiver.url).json()
        cancel(private_client, hook_tenant, queued_job(private_client, hook_tenant))
        assert deliveries.run_all(settings) == ["pending", "failed"]
    log = private_client.get(f"{HOOKS}/{slow['id']}/deliveries", headers=hook_tenant).json()["data"]
    assert [entry["error"] for entry in log] == ["timed out after 0.3 s"] * 2
    assert all(entry["status_code"] is None for entry in log)

    private_client.delete(f"{HOOKS}/{slow['id']}", headers=hook_tenant)
    closed = register(private_client, hook_tenant, receiver.url).json()  # the server is gone now
    cancel(private_client, hook_tenant, queued_job(private_client, hook_tenant))
    assert deliveries.run_all(settings) == ["pending", "failed"]
    log = private_client.get(f"{HOOKS}/{closed['id']}/deliveries", headers=hook_tenant).json()["data"]
    assert all(entry["error"].startswith("connection error") for entry in log)


def test_the_address_is_checked_again_at_delivery_time(
    private_client: TestClient,
    hook_tenant: dict[str, str],
    private_settings: Settings,
    deliveries: SentDeliveries,
) -> None:
    """Registered while private networks were allowed; delivering once they are not sends nothing."""
    with running_receiver() as receiver:
        endpoint = register(private_client, hook_tenant, receiver.url).json()
        cancel(private_client, hook_tenant, queued_job(private_client, hook_tenant))
        strict = private_settings.model_copy(update={"webhook_allow_private_networks": False})
        assert deliveries.run_all(strict) == ["failed"]
        assert receiver.requests == []
    (entry,) = private_client.get(f"{HOOKS}/{endpoint['id']}/deliveries", headers=hook_tenant).json()["data"]
    assert entry["status_code"] is None and entry["error"].startswith("refused:")


def test_a_deleted_endpoint_gets_no_more_attempts(
    private_client: TestClient,
    hook_tenant: dict[str, str],
    private_settings: Settings,
    deliveries: SentDeliveries,
) -> None:
    with running_receiver() as receiver:
        endpoint = register(private_client, hook_tenant, receiver.url).json()
        cancel(private_client, hook_tenant, queued_job(private_client, hook_tenant))
        assert private_client.delete(f"{HOOKS}/{endpoint['id']}", headers=hook_tenant).status_code == 200
        assert deliveries.run_all(private_settings) == ["nothing_to_do"]
        assert receiver.requests == []


def test_a_broker_down_at_commit_keeps_the_transition_and_the_delivery_pending(
    private_client: TestClient,
    hook_tenant: dict[str, str],
    private_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    deliveries: SentDeliveries,
    db: Session,
) -> None:
    def broker_down(settings: Settings, delivery_id: str, countdown: float | None = None) -> None:
        raise ConnectionError("broker down (test)")

    with running_receiver() as receiver:
        endpoint = register(private_client, hook_tenant, receiver.url).json()
        job_id = queued_job(private_client, hook_tenant)
        monkeypatch.setattr(emit, "enqueue_delivery", broker_down)
        cancel(private_client, hook_tenant, job_id)  # still a 200: the job is cancelled
        (lost,) = db.scalars(select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint["id"]))
        assert lost in pending_delivery_ids(private_settings)
        # What a starting worker does with it: send it again; then it is delivered.
        monkeypatch.setattr(emit, "enqueue_delivery", deliveries)
        assert deliver_and_schedule(private_settings, lost) == "delivered"
        (request,) = receiver.wait_for(1, 5)
    assert json.loads(request.body)["data"] == {"id": job_id}
    assert lost not in pending_delivery_ids(private_settings)


def test_an_endpoint_deleted_during_an_attempt_ends_its_delivery(
    private_client: TestClient,
    hook_tenant: dict[str, str],
    private_settings: Settings,
    deliveries: SentDeliveries,
    db_engine: sa.Engine,
) -> None:
    with running_receiver(statuses=[500]) as receiver:
        endpoint = register(private_client, hook_tenant, receiver.url).json()

        def delete_endpoint() -> None:
            with Session(db_engine) as session:
                session.execute(sa.delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint["id"]))
                session.commit()

        receiver.on_request = delete_endpoint
        cancel(private_client, hook_tenant, queued_job(private_client, hook_tenant))
        assert deliveries.run_all(private_settings) == ["nothing_to_do"]  # no retry of the 500
        assert len(receiver.requests) == 1
