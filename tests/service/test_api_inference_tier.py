"""The API in front of inference processes (InferenceRouter over scripted fake processes): which
process answered travels to the client as a header, and a process lost mid-answer is a clear 502 (an
error event when streamed), 503 + Retry-After when none answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from api_helpers import assert_error
from fastapi.testclient import TestClient
from scripted_processes import ScriptedProcesses, scripted_router
from serving_api_helpers import LLAMA, sse_payloads

from api.inference_tier import wire
from api.main import create_app
from lorasp_service.settings import Settings

NAMES = {"http://inference-a:8100": "inference-a", "http://inference-b:8100": "inference-b"}
CHAT: dict[str, Any] = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture()
def processes() -> ScriptedProcesses:
    return ScriptedProcesses(dict(NAMES))


@pytest.fixture()
def routed_client(api_settings: Settings, processes: ScriptedProcesses) -> Iterator[TestClient]:
    router = scripted_router(api_settings, processes)
    with TestClient(create_app(api_settings, serving_engine=router)) as client:
        yield client
    router.close()


def _name_of_last(processes: ScriptedProcesses) -> str:
    return processes.names[processes.answered_by[-1]]


def test_the_answering_process_is_named_on_chat_and_completion_answers(
    routed_client: TestClient, processes: ScriptedProcesses, alice: dict[str, str]
) -> None:
    answered = routed_client.post("/v1/chat/completions", headers=alice, json=CHAT)
    assert answered.status_code == 200, answered.text
    assert answered.json()["choices"][0]["message"]["content"] == "hello"
    first = answered.headers[wire.PROCESS_HEADER]
    assert first == _name_of_last(processes)
    # that process goes down: the other one answers, and the header follows it
    processes.down.add(processes.answered_by[-1])
    streamed = routed_client.post("/v1/chat/completions", headers=alice, json={**CHAT, "stream": True})
    assert streamed.status_code == 200
    assert streamed.headers[wire.PROCESS_HEADER] == _name_of_last(processes) != first
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert sse_payloads(streamed.text)[-1] == "[DONE]"
    completion = routed_client.post(
        "/v1/completions", headers=alice, json={"model": LLAMA, "prompt": "x", "max_tokens": 2}
    )
    assert completion.status_code == 200
    assert completion.headers[wire.PROCESS_HEADER] == _name_of_last(processes)


def test_a_process_lost_mid_answer_is_a_502_and_the_retry_goes_elsewhere(
    routed_client: TestClient, processes: ScriptedProcesses, alice: dict[str, str]
) -> None:
    processes.cut_after = 1  # one chunk arrives, then the connection is reset mid-body
    lost = routed_client.post("/v1/chat/completions", headers=alice, json=CHAT)
    error = assert_error(lost, 502, code="inference_process_lost")
    assert error["type"] == "server_error"
    cut = processes.answered_by[-1]
    processes.cut_after = None
    retried = routed_client.post("/v1/chat/completions", headers=alice, json=CHAT)
    assert retried.status_code == 200
    assert processes.answered_by[-1] != cut  # the lost process was marked down


def test_a_streamed_answer_lost_midway_ends_with_an_error_event(
    routed_client: TestClient, processes: ScriptedProcesses, alice: dict[str, str]
) -> None:
    processes.cut_after = 1
    streamed = routed_client.post("/v1/chat/completions", headers=alice, json={**CHAT, "stream": True})
    assert streamed.status_code == 200  # the 200 went out before the process was lost
    payloads = sse_payloads(streamed.text)
    assert payloads[-1] != "[DONE]"
    assert payloads[-1]["error"]["code"] == "inference_process_lost"
    texts = [p["choices"][0]["delta"].get("content") for p in payloads[:-1] if p.get("choices")]
    assert "he" in texts  # what arrived before the cut was streamed


def test_no_process_answering_is_a_503_with_retry_after(
    routed_client: TestClient, processes: ScriptedProcesses, alice: dict[str, str]
) -> None:
    processes.down.update(NAMES)
    refused = routed_client.post("/v1/chat/completions", headers=alice, json=CHAT)
    assert_error(refused, 503, code="inference_unavailable")
    assert int(refused.headers["retry-after"]) == 60  # the router's backoff before it retries one
