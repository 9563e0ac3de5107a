"""`GET .../events?stream=true`: server-sent events, oldest first, live, resumable, ending at a final
status, behind auth and tenancy."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from api_helpers import assert_error, create_job
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.services import event_stream
from lorasp_service.jobs import add_event

JOBS = "/v1/fine_tuning/jobs"


def sse_messages(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Parsed SSE messages (id, event, data as JSON, at = arrival time); comments as {"comment": ...}."""
    message: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if message:
                message["at"] = time.monotonic()
                yield message
            message = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip(), "at": time.monotonic()}
        else:
            name, _, value = line.partition(": ")
            message[name] = json.loads(value) if name == "data" else value


def read_stream(
    client: TestClient, headers: dict[str, str], job_id: str, query: str = ""
) -> list[dict[str, Any]]:
    with client.stream("GET", f"{JOBS}/{job_id}/events?stream=true{query}", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_messages(response.iter_lines()))


@pytest.fixture()
def job_id(client: TestClient, alice: dict[str, str], chat_file: dict[str, Any]) -> str:
    response = create_job(client, alice, chat_file["id"])
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def cancel(client: TestClient, headers: dict[str, str], job_id: str) -> None:
    # A queued job is cancelled at once: a final status, so the stream ends after its event.
    assert client.post(f"{JOBS}/{job_id}/cancel", headers=headers).status_code == 200


def add_steps(db: Session, job_id: str, steps: range) -> None:
    for step in steps:
        add_event(
            db, job_id, f"step {step}", type="metrics", data={"step": step, "train_loss": 1.0 / (step + 1)}
        )
    db.commit()


def test_stream_sends_every_event_oldest_first_then_ends_at_final_status(
    client: TestClient, alice: dict[str, str], job_id: str, db: Session
) -> None:
    add_steps(db, job_id, range(3))
    cancel(client, alice, job_id)
    messages = read_stream(client, alice, job_id)
    listed = client.get(f"{JOBS}/{job_id}/events?limit=100", headers=alice).json()["data"]
    assert [m["data"] for m in messages] == list(reversed(listed))  # the list route's JSON, oldest first
    assert [m["id"] for m in messages] == [event["id"] for event in reversed(listed)]
    assert [m["event"] for m in messages] == [event["type"] for event in reversed(listed)]
    assert messages[0]["data"]["message"].startswith("Created fine-tuning job")
    assert [m["data"]["message"] for m in messages if m["event"] == "metrics"] == [
        "step 0",
        "step 1",
        "step 2",
    ]
    assert messages[-1]["data"]["message"] == "Fine-tuning job cancelled"


def test_events_written_while_streaming_arrive_within_a_second(
    client: TestClient, alice: dict[str, str], job_id: str, db_engine: sa.Engine
) -> None:
    written: dict[str, float] = {}

    def worker_writes() -> None:
        with Session(db_engine) as session:
            for step in range(2):
                time.sleep(0.6)
                add_event(session, job_id, f"live {step}")
                session.commit()
                written[f"live {step}"] = time.monotonic()
        time.sleep(0.3)
        cancel(client, alice, job_id)

    writer = threading.Timer(0.2, worker_writes)
    writer.start()
    messages = read_stream(client, alice, job_id)
    writer.join()
    arrived = {m["data"]["message"]: m["at"] for m in messages if "data" in m}
    for message, at in written.items():
        assert 0 <= arrived[message] - at < 1.0, (message, arrived[message] - at)
    order = [m["data"]["message"] for m in messages]
    assert order.index("live 0") < order.index("live 1") < order.index("Fine-tuning job cancelled")


@pytest.mark.parametrize("resume", ["header", "query"])
def test_reconnect_after_an_event_gets_exactly_the_rest(
    client: TestClient, alice: dict[str, str], job_id: str, db: Session, resume: str
) -> None:
    add_steps(db, job_id, range(6))
    cancel(client, alice, job_id)
    everything = read_stream(client, alice, job_id)
    last_seen = everything[3]["id"]
    if resume == "header":
        path = f"{JOBS}/{job_id}/events?stream=true"
        with client.stream("GET", path, headers={**alice, "Last-Event-ID": last_seen}) as response:
            rest = list(sse_messages(response.iter_lines()))
    else:
        rest = read_stream(client, alice, job_id, f"&after={last_seen}")
    assert [m["id"] for m in rest] == [m["id"] for m in everything[4:]]


def test_idle_stream_sends_keep_alive_comments(
    client: TestClient, alice: dict[str, str], job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_stream, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(event_stream, "KEEPALIVE_SECONDS", 0.2)
    writer = threading.Timer(0.8, cancel, (client, alice, job_id))
    writer.start()
    messages = read_stream(client, alice, job_id)
    writer.join()
    assert {"keep-alive"} == {m["comment"] for m in messages if "comment" in m}
    assert sum("comment" in m for m in messages) >= 2
    assert messages[-1]["data"]["message"] == "Fine-tuning job cancelled"


def test_stream_is_tenant_scoped_and_checks_its_resume_point(
    client: TestClient, alice: dict[str, str], bob: dict[str, str], job_id: str
) -> None:
    streamed = f"{JOBS}/{job_id}/events?stream=true"
    theirs = assert_error(client.get(streamed, headers=bob), 404, param="fine_tuning_job_id")
    unknown = assert_error(
        client.get(f"{JOBS}/ftjob-nope/events?stream=true", headers=bob), 404, param="fine_tuning_job_id"
    )
    assert theirs["message"].replace(job_id, "X") == unknown["message"].replace("ftjob-nope", "X")
    assert_error(client.get(streamed, headers={**alice, "Last-Event-ID": "ftevent-nope"}), 404, param="after")
    assert_error(client.get(f"{streamed}&after=ftevent-nope", headers=alice), 404, param="after")
    assert client.get(streamed).status_code == 401


def test_an_open_stream_holds_no_database_connection_while_it_waits(
    client: TestClient, alice: dict[str, str], job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_stream, "POLL_SECONDS", 0.5)
    pool = client.app.state.lorasp.engine.pool  # type: ignore[attr-defined]
    samples: list[int] = []

    def sample_then_cancel() -> None:
        for _ in range(10):
            time.sleep(0.1)
            samples.append(pool.checkedout())
        cancel(client, alice, job_id)

    watcher = threading.Timer(0.3, sample_then_cancel)
    watcher.start()
    messages = read_stream(client, alice, job_id)
    watcher.join()
    # A poll holds a connection for a few milliseconds; the request's own session would hold one always.
    assert samples.count(0) >= 8, samples
    assert messages[-1]["data"]["message"] == "Fine-tuning job cancelled"
