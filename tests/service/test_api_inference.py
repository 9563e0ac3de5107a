"""/v1/chat/completions, /v1/completions and /v1/classifications on base models and real LoRA-SP adapters."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from api_helpers import assert_error
from fastapi.testclient import TestClient
from serving_api_helpers import (
    BERT,
    LLAMA,
    chat_ids,
    greedy_text,
    make_bert_adapter,
    make_llama_adapter,
    prompt_ids,
    register_adapter,
    sse_payloads,
)
from sqlalchemy.orm import Session
from torch import nn

from api.main import create_app
from api.services.inference import Target, sse_stream
from lorasp_core.serving import GenerationChunk, GenerationStream
from lorasp_service.settings import Settings

MESSAGES = [{"role": "user", "content": "Say something"}]
PROMPT = "The adapter says"


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inference_adapters")


@pytest.fixture(scope="module")
def llama_models(adapters_dir: Path) -> dict[int, nn.Module]:
    return {seed: make_llama_adapter(adapters_dir / f"llama-{seed}", seed) for seed in (1, 2, 3)}


@pytest.fixture(scope="module")
def bert_model(adapters_dir: Path) -> nn.Module:
    return make_bert_adapter(adapters_dir / "bert", 7, ["negative", "neutral", "positive"])


@pytest.fixture(scope="module")
def serving_client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings.model_copy(update={"serving_max_adapters": 4}))) as client:
        yield client


@pytest.fixture()
def llama_ids(
    db: Session, api_settings: Settings, alice: dict[str, str], adapters_dir: Path, llama_models: Any
) -> dict[int, str]:
    return {
        seed: register_adapter(db, api_settings, alice["X-Tenant-Id"], adapters_dir / f"llama-{seed}")
        for seed in llama_models
    }


def chat(client: TestClient, headers: dict[str, str], model: str, **body: Any) -> Any:
    payload = {"model": model, "messages": MESSAGES, "max_tokens": 12, "temperature": 0, **body}
    return client.post("/v1/chat/completions", headers=headers, json=payload)


def test_chat_with_base_and_adapter_matches_the_adapted_model(
    serving_client: TestClient, alice: dict[str, str], llama_ids: dict[int, str], llama_models: Any
) -> None:
    base = chat(serving_client, alice, LLAMA)
    assert base.status_code == 200, base.text
    body = base.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == LLAMA and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in {"stop", "length"}
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(chat_ids(MESSAGES))
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    adapted = chat(serving_client, alice, llama_ids[1])
    assert adapted.status_code == 200, adapted.text
    assert adapted.json()["model"] == llama_ids[1]
    text = adapted.json()["choices"][0]["message"]["content"]
    assert text != choice["message"]["content"]
    assert text == greedy_text(llama_models[1], chat_ids(MESSAGES), 12)


def test_completion_with_adapter_matches_the_adapted_model(
    serving_client: TestClient, alice: dict[str, str], llama_ids: dict[int, str], llama_models: Any
) -> None:
    payload = {"model": llama_ids[2], "prompt": PROMPT, "max_tokens": 10, "temperature": 0}
    response = serving_client.post("/v1/completions", headers=alice, json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == greedy_text(llama_models[2], prompt_ids(PROMPT), 10)
    assert body["usage"]["prompt_tokens"] == len(prompt_ids(PROMPT))
    assert body["usage"]["completion_tokens"] <= 10


def test_streamed_chat_concatenates_to_the_full_text(
    serving_client: TestClient, alice: dict[str, str], llama_ids: dict[int, str]
) -> None:
    full = chat(serving_client, alice, llama_ids[3]).json()
    response = chat(serving_client, alice, llama_ids[3], stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage_chunk, choice_chunks = chunks[-1], chunks[:-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == full["usage"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in choice_chunks)
    assert text == full["choices"][0]["message"]["content"]
    assert choice_chunks[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in choice_chunks[:-1])


def test_streamed_completion_ends_with_done(serving_client: TestClient, alice: dict[str, str]) -> None:
    payload = {"model": LLAMA, "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    full = serving_client.post("/v1/completions", headers=alice, json=payload).json()
    response = serving_client.post("/v1/completions", headers=alice, json={**payload, "stream": True})
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    assert "".join(p["choices"][0]["text"] for p in payloads[:-1]) == full["choices"][0]["text"]
    assert payloads[-2]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]


def test_classification_with_adapter_labels_and_base_model(
    serving_client: TestClient,
    alice: dict[str, str],
    db: Session,
    api_settings: Settings,
    adapters_dir: Path,
    bert_model: nn.Module,
) -> None:
    labels = ["negative", "neutral", "positive"]
    adapter_id = register_adapter(
        db,
        api_settings,
        alice["X-Tenant-Id"],
        adapters_dir / "bert",
        base_model=BERT,
        task="seq-cls",
        label_names=labels,
    )
    texts = ["great film", "awful film", "fine"]
    response = serving_client.post(
        "/v1/classifications", headers=alice, json={"model": adapter_id, "input": texts}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == adapter_id
    assert [row["index"] for row in body["data"]] == [0, 1, 2]
    for row in body["data"]:
        assert set(row["scores"]) == set(labels)
        assert row["label"] == max(row["scores"], key=row["scores"].get)
        assert row["score"] == pytest.approx(row["scores"][row["label"]])
        assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    base = serving_client.post("/v1/classifications", headers=alice, json={"model": BERT, "input": "fine"})
    assert base.status_code == 200 and set(base.json()["data"][0]["scores"]) == {"LABEL_0", "LABEL_1"}
    # Wrong task either way round is a 400 naming the model.
    assert_error(chat(serving_client, alice, adapter_id), 400, param="model", code="model_not_supported")
    wrong = serving_client.post("/v1/classifications", headers=alice, json={"model": LLAMA, "input": "x"})
    assert_error(wrong, 400, param="model", code="model_not_supported")


def test_concurrent_requests_for_different_adapters_match_sequential(
    serving_client: TestClient, alice: dict[str, str], llama_ids: dict[int, str]
) -> None:
    models = [LLAMA, llama_ids[1], llama_ids[2], llama_ids[3]] * 2
    sequential = [chat(serving_client, alice, m).json()["choices"][0]["message"]["content"] for m in models]
    assert len(set(sequential[:4])) == 4  # every adapter really changes the output
    with ThreadPoolExecutor(max_workers=len(models)) as pool:
        responses = list(pool.map(lambda m: chat(serving_client, alice, m), models))
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()["choices"][0]["message"]["content"] for r in responses] == sequential


def test_other_tenant_cannot_use_the_adapter(
    serving_client: TestClient, bob: dict[str, str], llama_ids: dict[int, str]
) -> None:
    assert_error(chat(serving_client, bob, llama_ids[1]), 404, param="model", code="model_not_found")
    payload = {"model": llama_ids[1], "prompt": "x"}
    assert_error(serving_client.post("/v1/completions", headers=bob, json=payload), 404, param="model")
    assert_error(chat(serving_client, bob, "ft:tiny-random-llama:none:xxxxxxxx"), 404, param="model")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"stream": "yes"}, "stream"),
        ({"n": 9}, "n"),
        ({"stop": [""]}, "stop"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
    ],
)
def test_bad_chat_inputs_are_400s_naming_the_field(
    serving_client: TestClient, alice: dict[str, str], body: dict[str, Any], param: str
) -> None:
    payload = {"model": LLAMA, "messages": MESSAGES, **body}
    payload = {key: value for key, value in payload.items() if value is not None}
    response = serving_client.post("/v1/chat/completions", headers=alice, json=payload)
    assert_error(response, 400, param=param)


def test_bad_completion_and_classification_inputs(serving_client: TestClient, alice: dict[str, str]) -> None:
    missing = serving_client.post("/v1/completions", headers=alice, json={"model": LLAMA})
    assert_error(missing, 400, param="prompt")
    too_many = {"model": BERT, "input": ["x"] * 257}
    error = assert_error(serving_client.post("/v1/classifications", headers=alice, json=too_many), 400)
    assert error["param"].startswith("input")
    empty = {"model": BERT, "input": []}
    assert_error(serving_client.post("/v1/classifications", headers=alice, json=empty), 400)
    unauthenticated = serving_client.post("/v1/chat/completions", json={"model": LLAMA, "messages": MESSAGES})
    assert_error(unauthenticated, 401)


def test_stream_is_cancelled_when_the_client_goes_away() -> None:
    """Closing the SSE iterator mid-stream (what Starlette does on disconnect) cancels the generation."""
    stream = GenerationStream()
    stream.put(GenerationChunk(text_delta="a", token_count=1, prompt_tokens=3))
    target = Target(model=LLAMA, base_model=LLAMA, adapter=None)

    async def read_one_then_leave() -> list[str]:
        events = sse_stream(
            stream,
            target,
            "text_completion",
            head=[],
            payloads=lambda c: [{"t": c.text_delta}],
            usage_payload=None,
        )
        first = [await events.__anext__()]
        await events.aclose()
        return first

    assert asyncio.run(read_one_then_leave()) == ['data: {"t": "a"}\n\n']
    assert stream.cancelled
