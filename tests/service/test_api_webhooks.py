"""/v1/webhooks: endpoints (secret shown once, tenant isolation, validation, SSRF refusal) and the delivery
of job events (signature checked by the official client, retries with backoff, no redirects, the log).

Deliveries run in-process: `emit.enqueue_delivery` is replaced by a recorder, and the test runs each
recorded attempt with `deliver_and_schedule` (what the Celery task calls) after its countdown.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import sqlalchemy as sa
from api_helpers import assert_error, chat_rows, create_job, jsonl, upload
from conftest import EnqueueRecorder
from fastapi.testclient import TestClient
from openai.types.webhooks import FineTuningJobCancelledWebhookEvent
from sqlalchemy import select
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook
from webhook_receiver import running_receiver

from api.deps import get_enqueue
from api.main import create_app
from lorasp_service import jobs
from lorasp_service.settings import Settings
from lorasp_service.webhooks import emit
from lorasp_service.webhooks.delivery import deliver_and_schedule, pending_delivery_ids
from lorasp_service.webhooks.models import WebhookDelivery, WebhookEndpoint

HOOKS = "/v1/webhooks"
ALL_EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]
PUBLIC_URL = "https://1.1.1.1/hooks/lorasp"  # an IP literal: no DNS needed, never contacted here


class SentDeliveries:
    """Stands in for the broker: records (delivery id, countdown) of every enqueued attempt."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, float | None]] = []

    def __call__(self, settings: Settings, delivery_id: str, countdown: float | None = None) -> None:
        self.sent.append((delivery_id, countdown))

    def run_all(self, settings: Settings, limit: int = 20) -> list[str]:
        """Run queued attempts in order, honouring each countdown; returns each attempt's outcome."""
        outcomes = []
        while self.sent and len(outcomes) < limit:
            delivery_id, countdown = self.sent.pop(0)
            time.sleep(countdown or 0)
            outcomes.append(deliver_and_schedule(settings, delivery_id))
        return outcomes


@pytest.fixture()
def deliveries(monkeypatch: pytest.MonkeyPatch) -> SentDeliveries:
    recorder = SentDeliveries()
    monkeypatch.setattr(emit, "enqueue_delivery", recorder)
    return recorder


@pytest.fixture(scope="module")
def private_settings(api_settings: Settings) -> Settings:
    """The test deployment with private networks allowed (the receiver is on 127.0.0.1), fast retries."""
    return api_settings.model_copy(
        update={
            "webhook_allow_private_networks": True,
            "webhook_retry_base_seconds": 0.2,
            "webhook_timeout_seconds": 1.0,
        }
    )


@pytest.fixture(scope="module")
def private_client(private_settings: Settings, enqueue_recorder: EnqueueRecorder) -> Iterator[TestClient]:
    app = create_app(private_settings)
    app.dependency_overrides[get_enqueue] = lambda: enqueue_recorder
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture()
def tenant(make_tenant: Callable[[], dict[str, str]]) -> dict[str, str]:
    """A fresh tenant per test: its endpoints receive only the events this test causes."""
    return make_tenant()


def register(client: TestClient, headers: dict[str, str], url: str, events: list[str] | None = None) -> Any:
    return client.post(HOOKS, headers=headers, json={"url": url, "events": events or ALL_EVENTS})


def queued_job(client: TestClient, headers: dict[str, str]) -> str:
    file_id = upload(client, headers, jsonl(chat_rows())).json()["id"]
    response = create_job(client, headers, file_id)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def cancel(client: TestClient, headers: dict[str, str], job_id: str) -> None:
    response = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=headers)
    assert response.status_code == 200 and response.json()["status"] == "cancelled", response.text


def test_register_list_delete_secret_shown_once_and_tenants_isolated(
    client: TestClient, tenant: dict[str, str], bob: dict[str, str]
) -> None:
    created = register(client, tenant, PUBLIC_URL, ["fine_tuning.job.failed", "fine_tuning.job.failed"])
    assert created.status_code == 200, created.text
    body = created.json()
    assert set(body) == {"id", "object", "url", "events", "secret", "created_at"}
    assert body["object"] == "webhook_endpoint" and body["url"] == PUBLIC_URL
    assert body["events"] == ["fine_tuning.job.failed"]  # duplicates dropped
    assert body["secret"].startswith("whsec_") and len(base64.b64decode(body["secret"][6:])) == 32
    assert abs(body["created_at"] - time.time()) < 60

    listed = client.get(HOOKS, headers=tenant).json()
    assert [item["id"] for item in listed["data"]] == [body["id"]]
    assert "secret" not in listed["data"][0] and body["secret"] not in json.dumps(listed)
    fetched = client.get(f"{HOOKS}/{body['id']}", headers=tenant).json()
    assert "secret" not in fetched and fetched["events"] == ["fine_tuning.job.failed"]

    # Another tenant: the endpoint does not exist for it.
    assert body["id"] not in [item["id"] for item in client.get(HOOKS, headers=bob).json()["data"]]
    assert_error(client.get(f"{HOOKS}/{body['id']}", headers=bob), 404, param="webhook_id")
    assert_error(client.get(f"{HOOKS}/{body['id']}/deliveries", headers=bob), 404)
    assert_error(client.delete(f"{HOOKS}/{body['id']}", headers=bob), 404)

    deleted = client.delete(f"{HOOKS}/{body['id']}", headers=tenant)
    assert deleted.json() == {"id": body["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    assert client.get(HOOKS, headers=tenant).json()["data"] == []
    assert_error(client.delete(f"{HOOKS}/{body['id']}", headers=tenant), 404)


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (
            {"url": PUBLIC_URL, "events": ["fine_tuning.job.succeeded", "fine_tuning.job.exploded"]},
            "events[1]",
        ),
        ({"url": PUBLIC_URL, "events": []}, "events"),
        ({"url": PUBLIC_URL}, "events"),
        ({"events": ALL_EVENTS}, "url"),
        ({"url": "ftp://1.1.1.1/hooks", "events": ALL_EVENTS}, "url"),
        ({"url": "https://user:pw@1.1.1.1/hooks", "events": ALL_EVENTS}, "url"),
        ({"url": "not a url", "events": ALL_EVENTS}, "url"),
    ],
)
def test_bad_registrations_are_400s_naming_the_field(
    client: TestClient, tenant: dict[str, str], payload: dict[str, Any], param: str
) -> None:
    assert_error(client.post(HOOKS, headers=tenant, json=payload), 400, param=param)
    assert client.get(HOOKS, headers=tenant).json()["data"] == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://localhost:8080/hook",
        "http://192.168.1.10/hook",
        "http://0.0.0.0/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fe80::1]/hook",
        "http://224.0.0.1/hook",
    ],
)
def test_private_addresses_are_refused(client: TestClient, tenant: dict[str, str], url: str) -> None:
    error = assert_error(register(client, tenant, url), 400, param="url", code="invalid_url")
    assert "non-public address" in error["message"]


def test_delivered_event_verifies_with_the_official_client_and_tampering_is_rejected(
    private_client: TestClient, tenant: dict[str, str], private_settings: Settings, deliveries: SentDeliveries
) -> None:
    with running_receiver() as receiver:
        secret = register(private_client, tenant, receiver.url + "/hook").json()["secret"]
        job_id = queued_job(private_client, tenant)
        assert deliveries.sent == []  # nothing before a terminal transition
        cancel(private_client, tenant, job_id)
        assert len(deliveries.sent) == 1  # enqueued once the cancel committed
        assert deliveries.run_all(private_settings) == ["delivered"]
        (request,) = receiver.wait_for(1, 5)

    client = openai.OpenAI(api_key="unused", webhook_secret=secret)
    event = client.webhooks.unwrap(request.body, request.headers)
    assert isinstance(event, FineTuningJobCancelledWebhookEvent)
    assert event.type == "fine_tuning.job.cancelled" and event.data.id == job_id
    assert (
        event.id.startswith("evt_") and event.object == "event" and abs(event.created_at - time.time()) < 60
    )
    assert request.path == "/hook" and request.headers["content-type"] == "application/json"
    assert request.headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(request.body, request.headers)["data"] == {"id": job_id}

    tampered = request.body.replace(job_id.encode(), b"ftjob-someone-else")
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(tampered, request.headers)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai.OpenAI(
            api_key="unused", webhook_secret=register(private_client, tenant, receiver.url).json()["secret"]
        ).webhooks.unwrap(request.body, request.headers)


def test_worker_transitions_emit_only_subscribed_events(
    private_client: TestClient, tenant: dict[str, str], private_settings: Settings, deliveries: SentDeliveries
) -> None:
    with running_receiver() as receiver:
        register(private_client, tenant, receiver.url, ["fine_tuning.job.failed"])
        cancelled = queued_job(private_client, tenant)
        cancel(private_client, tenant, cancelled)
        assert deliveries.sent == []  # not subscribed to cancellations

        failed = queued_job(private_client, tenant)
        claim = jobs.claim_job(private_settings, failed, "test-host:1")
        assert claim.runs
        assert jobs.finish_job(
            private_settings,
            failed,
            "test-host:1",
            claim.attempt,
            "failed",
            "Fine-tuning job failed: boom",
            error={"code": "x", "message": "boom", "param": None},
        )
        assert deliveries.run_all(private_settings) == ["delivered"]
        (request,) = receiver.wait_for(1, 5)
    body = json.loads(request.body)
    assert body["type"] == "fine_tuning.job.failed" and body["data"] == {"id": failed}


def test_a_receiver_failing_twice_gets_the_event_three_times_with_growing_delays(
    private_client: TestClient, tenant: dict[str, str], private_settings: Settings, deliveries: SentDeliveries
) -> None:
    with running_receiver(statuses=[500, 503]) as receiver:
        endpoint = register(private_client, tenant, receiver.url).json()
        cancel(private_client, tenant, queued_job(private_client, tenant))
        assert deliveries.run_all(private_settings) == ["pending", "pending", "delivered"]
        first, second, third = receiver.wait_for(3, 5)

    assert first.body == second.body == third.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == third.headers["webhook-id"]
    gap1, gap2 = second.at - first.at, third.at - second.at
    assert gap1 >= 0.2 and gap2 >= 0.4 and gap2 > gap1, (gap1, gap2)  # base 0.2 s, doubling

    log = private_client.get(f"{HOOKS}/{endpoint['id']}/deliveries", headers=tenant).json()["data"]
    assert [entry["attempt"] for entry in log] == [3, 2, 1]
    assert [entry["status_code"] for entry in log] == [200, 503, 500]
    event_id = json.loads(first.body)["id"]
    assert {entry["event_id"] for entry in log} == {event_id}
    assert {entry["webhook_id"] for entry in log} == {first.headers["webhook-id"]}
    assert all(
        entry["event_type"] == "fine_tuning.job.cancelled" and entry["duration_ms"] > 0 for entry in log
    )
    page = private_client.get(
        f"{HOOKS}/{endpoint['id']}/deliveries", headers=tenant, params={"limit": 2, "after": log[0]["id"]}
    ).json()
    assert [entry["attempt"] for entry in page["data"]] == [2, 1] and page["has_more"] is False
    unknown = private_client.get(
        f"{HOOKS}/{endpoint['id']}/deliveries", headers=tenant, params={"after": "whatt_x"}
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
    tenant: dict[str, str],
    private_settings: Settings,
    deliveries: SentDeliveries,
    statuses: list[int],
    outcomes: list[str],
) -> None:
    settings = private_settings.model_copy(
        update={"webhook_max_attempts": 2, "webhook_retry_base_seconds": 0.01}
    )
    with running_receiver(statuses=list(statuses)) as receiver:
        register(private_client, tenant, receiver.url)
        cancel(private_client, tenant, queued_job(private_client, tenant))
        assert deliveries.run_all(settings) == outcomes
        assert len(receiver.requests) == len(outcomes)


def test_redirects_are_not_followed(
    private_client: TestClient, tenant: dict[str, str], private_settings: Settings, deliveries: SentDeliveries
) -> None:
    with running_receiver(statuses=[302]) as receiver:
        receiver.redirect_to = receiver.url + "/elsewhere"
        endpoint = register(private_client, tenant, receiver.url + "/hook").json()
        cancel(private_client, tenant, queued_job(private_client, tenant))
        assert deliveries.run_all(private_settings) == ["failed"]  # a failed delivery, not retried
        assert [request.path for request in receiver.requests] == ["/hook"]
    (entry,) = private_client.get(f"{HOOKS}/{endpoint['id']}/deliveries", headers=tenant).json()["data"]
    assert entry["status_code"] == 302 and entry["error"] == "redirect not followed"


def test_timeouts_and_refused_connections_are_retried(
    private_client: TestClient, tenant: dict[str, str], private_settings: Settings, deliveries: SentDeliveries
) -> None:
    settings = private_settings.model_copy(
        update={"webhook_timeout_seconds": 0.3, "webhook_max_attempts": 2, "webhook_retry_base_seconds": 0.01}
    )
    with running_receiver(delay_seconds=1.0) as receiver:
        slow = register(private_client, tenant, receiver.url).json()
        cancel(private_client, tenant, queued_job(private_client, tenant))
        assert deliveries.run_all(settings) == ["pending", "failed"]
    log = private_client.get(f"{HOOKS}/{slow['id']}/deliveries", headers=tenant).json()["data"]
    assert [entry["error"] for entry in log] == ["timed out after 0.3 s"] * 2
    assert all(entry["status_code"] is None for entry in log)

    private_client.delete(f"{HOOKS}/{slow['id']}", headers=tenant)
    closed = register(private_client, tenant, receiver.url).json()  # the server is gone now
    cancel(private_client, tenant, queued_job(private_client, tenant))
    assert deliveries.run_all(settings) == ["pending", "failed"]
    log = private_client.get(f"{HOOKS}/{closed['id']}/deliveries", headers=tenant).json()["data"]
    assert all(entry["error"].startswith("connection error") for entry in log)


def test_the_address_is_checked_again_at_delivery_time(
    private_client: TestClient, tenant: dict[str, str], private_settings: Settings, deliveries: SentDeliveries
) -> None:
    """Registered while private networks were allowed; delivering once they are not sends nothing."""
    with running_receiver() as receiver:
        endpoint = register(private_client, tenant, receiver.url).json()
        cancel(private_client, tenant, queued_job(private_client, tenant))
        strict = private_settings.model_copy(update={"webhook_allow_private_networks": False})
        assert deliveries.run_all(strict) == ["failed"]
        assert receiver.requests == []
    (entry,) = private_client.get(f"{HOOKS}/{endpoint['id']}/deliveries", headers=tenant).json()["data"]
    assert entry["status_code"] is None and entry["error"].startswith("refused:")


def test_a_deleted_endpoint_gets_no_more_attempts(
    private_client: TestClient, tenant: dict[str, str], private_settings: Settings, deliveries: SentDeliveries
) -> None:
    with running_receiver() as receiver:
        endpoint = register(private_client, tenant, receiver.url).json()
        cancel(private_client, tenant, queued_job(private_client, tenant))
        assert private_client.delete(f"{HOOKS}/{endpoint['id']}", headers=tenant).status_code == 200
        assert deliveries.run_all(private_settings) == ["nothing_to_do"]
        assert receiver.requests == []


def test_a_rolled_back_transition_sends_nothing(
    client: TestClient, tenant: dict[str, str], db: Session, deliveries: SentDeliveries
) -> None:
    register(client, tenant, PUBLIC_URL)
    job_id = queued_job(client, tenant)
    (delivery_id,) = emit.emit_job_event(db, job_id, "cancelled")
    db.rollback()
    db.commit()
    assert deliveries.sent == [] and db.get(WebhookDelivery, delivery_id) is None
    with pytest.raises(ValueError, match="running"):
        emit.emit_job_event(db, job_id, "running")


def test_a_broker_down_at_commit_keeps_the_transition_and_the_delivery_pending(
    private_client: TestClient,
    tenant: dict[str, str],
    private_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    deliveries: SentDeliveries,
    db: Session,
) -> None:
    def broker_down(settings: Settings, delivery_id: str, countdown: float | None = None) -> None:
        raise ConnectionError("broker down (test)")

    with running_receiver() as receiver:
        endpoint = register(private_client, tenant, receiver.url).json()
        job_id = queued_job(private_client, tenant)
        monkeypatch.setattr(emit, "enqueue_delivery", broker_down)
        cancel(private_client, tenant, job_id)  # still a 200: the job is cancelled
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
    tenant: dict[str, str],
    private_settings: Settings,
    deliveries: SentDeliveries,
    db_engine: sa.Engine,
) -> None:
    with running_receiver(statuses=[500]) as receiver:
        endpoint = register(private_client, tenant, receiver.url).json()

        def delete_endpoint() -> None:
            with Session(db_engine) as session:
                session.execute(sa.delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint["id"]))
                session.commit()

        receiver.on_request = delete_endpoint
        cancel(private_client, tenant, queued_job(private_client, tenant))
        assert deliveries.run_all(private_settings) == ["nothing_to_do"]  # no retry of the 500
        assert len(receiver.requests) == 1
