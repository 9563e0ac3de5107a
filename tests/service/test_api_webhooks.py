"""/v1/webhooks: endpoints (secret shown once, tenant isolation, validation, SSRF refusal) and the events
job transitions emit (verified by the official client's `webhooks.unwrap`, only to subscribed endpoints,
only after commit)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import openai
import pytest
from api_helpers import assert_error
from fastapi.testclient import TestClient
from openai.types.webhooks import FineTuningJobCancelledWebhookEvent
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook
from webhook_fixtures import ALL_EVENTS, HOOKS, PUBLIC_URL, SentDeliveries, cancel, queued_job, register
from webhook_receiver import running_receiver

from lorasp_service import jobs
from lorasp_service.settings import Settings
from lorasp_service.webhooks import emit
from lorasp_service.webhooks.models import WebhookDelivery


def test_register_list_delete_secret_shown_once_and_tenants_isolated(
    client: TestClient, hook_tenant: dict[str, str], bob: dict[str, str]
) -> None:
    created = register(client, hook_tenant, PUBLIC_URL, ["fine_tuning.job.failed", "fine_tuning.job.failed"])
    assert created.status_code == 200, created.text
    body = created.json()
    assert set(body) == {"id", "object", "url", "events", "secret", "created_at"}
    assert body["object"] == "webhook_endpoint" and body["url"] == PUBLIC_URL
    assert body["events"] == ["fine_tuning.job.failed"]  # duplicates dropped
    assert body["secret"].startswith("whsec_") and len(base64.b64decode(body["secret"][6:])) == 32
    assert abs(body["created_at"] - time.time()) < 60

    listed = client.get(HOOKS, headers=hook_tenant).json()
    assert [item["id"] for item in listed["data"]] == [body["id"]]
    assert "secret" not in listed["data"][0] and body["secret"] not in json.dumps(listed)
    fetched = client.get(f"{HOOKS}/{body['id']}", headers=hook_tenant).json()
    assert "secret" not in fetched and fetched["events"] == ["fine_tuning.job.failed"]

    # Another tenant: the endpoint does not exist for it.
    assert body["id"] not in [item["id"] for item in client.get(HOOKS, headers=bob).json()["data"]]
    assert_error(client.get(f"{HOOKS}/{body['id']}", headers=bob), 404, param="webhook_id")
    assert_error(client.get(f"{HOOKS}/{body['id']}/deliveries", headers=bob), 404)
    assert_error(client.delete(f"{HOOKS}/{body['id']}", headers=bob), 404)

    deleted = client.delete(f"{HOOKS}/{body['id']}", headers=hook_tenant)
    assert deleted.json() == {"id": body["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    assert client.get(HOOKS, headers=hook_tenant).json()["data"] == []
    assert_error(client.delete(f"{HOOKS}/{body['id']}", headers=hook_tenant), 404)


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
    client: TestClient, hook_tenant: dict[str, str], payload: dict[str, Any], param: str
) -> None:
    assert_error(client.post(HOOKS, headers=hook_tenant, json=payload), 400, param=param)
    assert client.get(HOOKS, headers=hook_tenant).json()["data"] == []


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
def test_private_addresses_are_refused(client: TestClient, hook_tenant: dict[str, str], url: str) -> None:
    error = assert_error(register(client, hook_tenant, url), 400, param="url", code="invalid_url")
    assert "non-public address" in error["message"]


def test_delivered_event_verifies_with_the_official_client_and_tampering_is_rejected(
    private_client: TestClient,
    hook_tenant: dict[str, str],
    private_settings: Settings,
    deliveries: SentDeliveries,
) -> None:
    with running_receiver() as receiver:
        secret = register(private_client, hook_tenant, receiver.url + "/hook").json()["secret"]
        job_id = queued_job(private_client, hook_tenant)
        assert deliveries.sent == []  # nothing before a terminal transition
        cancel(private_client, hook_tenant, job_id)
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
            api_key="unused",
            webhook_secret=register(private_client, hook_tenant, receiver.url).json()["secret"],
        ).webhooks.unwrap(request.body, request.headers)


def test_worker_transitions_emit_only_subscribed_events(
    private_client: TestClient,
    hook_tenant: dict[str, str],
    private_settings: Settings,
    deliveries: SentDeliveries,
) -> None:
    with running_receiver() as receiver:
        register(private_client, hook_tenant, receiver.url, ["fine_tuning.job.failed"])
        cancelled = queued_job(private_client, hook_tenant)
        cancel(private_client, hook_tenant, cancelled)
        assert deliveries.sent == []  # not subscribed to cancellations

        failed = queued_job(private_client, hook_tenant)
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


def test_a_rolled_back_transition_sends_nothing(
    client: TestClient, hook_tenant: dict[str, str], db: Session, deliveries: SentDeliveries
) -> None:
    register(client, hook_tenant, PUBLIC_URL)
    job_id = queued_job(client, hook_tenant)
    (delivery_id,) = emit.emit_job_event(db, job_id, "cancelled")
    db.rollback()
    db.commit()
    assert deliveries.sent == [] and db.get(WebhookDelivery, delivery_id) is None
    with pytest.raises(ValueError, match="running"):
        emit.emit_job_event(db, job_id, "running")


def test_a_pause_is_announced_to_endpoints_that_subscribed_to_it(
    private_client: TestClient,
    hook_tenant: dict[str, str],
    private_settings: Settings,
    deliveries: SentDeliveries,
) -> None:
    with running_receiver() as receiver:
        registered = register(private_client, hook_tenant, receiver.url, ["fine_tuning.job.paused"])
        secret = registered.json()["secret"]
        job_id = queued_job(private_client, hook_tenant)
        paused = private_client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=hook_tenant)
        assert paused.status_code == 200 and paused.json()["status"] == "paused", paused.text
        cancel(private_client, hook_tenant, job_id)  # not subscribed: nothing more is sent
        assert deliveries.run_all(private_settings) == ["delivered"]
        (request,) = receiver.wait_for(1, 5)
    # OpenAI has no pause event type: the client still verifies it and keeps its type and data
    client = openai.OpenAI(api_key="unused", webhook_secret=secret)
    event = client.webhooks.unwrap(request.body, request.headers)
    assert event.type == "fine_tuning.job.paused"  # type: ignore[comparison-overlap]
    assert json.loads(request.body)["data"] == {"id": job_id}
