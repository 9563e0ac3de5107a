"""Fixtures and helpers of the webhook tests (registered for tests/service by its conftest).

Deliveries run in-process: `emit.enqueue_delivery` is replaced by a recorder (`deliveries`), and a test
runs each recorded attempt with `deliver_and_schedule` (what the Celery task calls) after its countdown.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from api_helpers import chat_rows, create_job, jsonl, upload
from fastapi.testclient import TestClient

from api.deps import get_enqueue
from api.main import create_app
from lorasp_service.settings import Settings
from lorasp_service.webhooks import emit
from lorasp_service.webhooks.delivery import deliver_and_schedule

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
def private_client(private_settings: Settings, enqueue_recorder: Any) -> Iterator[TestClient]:
    app = create_app(private_settings)
    app.dependency_overrides[get_enqueue] = lambda: enqueue_recorder
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture()
def hook_tenant(make_tenant: Callable[[], dict[str, str]]) -> dict[str, str]:
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
