"""A webhook through the whole stack: a job ends on a real worker, the delivery task runs on a real worker
(via Redis), and the receiver's request verifies with the official client. Prints the delivery latency."""

from __future__ import annotations

import openai
import pytest
from e2e_stack import Stack, chat_rows, wait_for_end, wait_until
from openai.types.webhooks import FineTuningJobSucceededWebhookEvent
from webhook_receiver import running_receiver

pytestmark = pytest.mark.services

EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]


def test_a_succeeded_job_is_delivered_signed_by_a_real_worker(stack: Stack, worker: object) -> None:
    with running_receiver() as receiver, stack.client() as client:
        created = client.post("/webhooks", json={"url": receiver.url + "/lorasp", "events": EVENTS})
        assert created.status_code == 200, created.text
        endpoint = created.json()
        try:
            file_id = stack.upload(client, chat_rows(8, words=4))
            job = stack.create_job(client, file_id, n_epochs=1, batch_size=4)
            done = wait_for_end(client, job["id"], 120)
            assert done["status"] == "succeeded", done["error"]
            (request,) = receiver.wait_for(1, 60)
            # The attempt is logged once the receiver's answer is back: shortly after it got the request.
            log = wait_until(
                lambda: client.get(f"/webhooks/{endpoint['id']}/deliveries").json()["data"],
                30,
                "the delivery log",
            )
        finally:
            # The stack's tenant is shared by the other e2e tests: their jobs must not be sent here.
            client.delete(f"/webhooks/{endpoint['id']}")

    client_side = openai.OpenAI(api_key="unused", webhook_secret=endpoint["secret"])
    event = client_side.webhooks.unwrap(request.body, request.headers)
    assert isinstance(event, FineTuningJobSucceededWebhookEvent)
    assert event.data.id == job["id"]
    assert [(entry["attempt"], entry["status_code"]) for entry in log] == [(1, 200)]

    finished_at = stack.job_row(job["id"])["finished_at"]
    latency = request.at - finished_at.timestamp()
    print(f"\nwebhook delivery latency (job succeeded -> receiver got the event): {latency * 1000:.0f} ms")
    assert 0 <= latency < 60
