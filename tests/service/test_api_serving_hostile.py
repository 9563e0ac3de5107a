"""Serving against hostile tenants (issue 12): one tenant's bad request never fails another tenant's
requests, and input the engine cannot take is a 400 naming the field, never a 500."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from api_helpers import assert_error
from fastapi.testclient import TestClient
from serving_api_helpers import BERT, LLAMA

from api.main import create_app
from api.services.serving import build_serving_engine
from lorasp_core.serving import sampling as sampling_module
from lorasp_service.settings import Settings

MESSAGES = [{"role": "user", "content": "hi"}]
POISON_TEMPERATURE = 0.7


def chat(client: TestClient, headers: dict[str, str], model: str, **body: Any) -> Any:
    payload = {"model": model, "messages": MESSAGES, "max_tokens": 4, "temperature": 0, **body}
    return client.post("/v1/chat/completions", headers=headers, json=payload)


def raw_post(client: TestClient, headers: dict[str, str], path: str, body: str) -> Any:
    """Post JSON text as is: how a lone surrogate escape ("\\ud800") reaches the server."""
    return client.post(path, headers={**headers, "Content-Type": "application/json"}, content=body)


# item 1: seeds, and a poisoned row among good ones -------------------------------------------------
@pytest.fixture(scope="module")
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as client:
        yield client


@pytest.mark.parametrize("seed", [2**64, 2**63, -(2**63) - 1])
def test_out_of_range_seed_is_a_400_naming_seed(client: TestClient, alice: dict[str, str], seed: int) -> None:
    assert_error(chat(client, alice, LLAMA, temperature=1, seed=seed), 400, param="seed")
    body = {"model": LLAMA, "prompt": "x", "max_tokens": 2, "temperature": 1, "seed": seed}
    assert_error(client.post("/v1/completions", headers=alice, json=body), 400, param="seed")


def test_extreme_valid_seeds_are_served(client: TestClient, alice: dict[str, str]) -> None:
    for seed in (2**63 - 1, -(2**63)):
        assert chat(client, alice, LLAMA, temperature=1, seed=seed).status_code == 200


def test_a_failing_row_fails_alone_in_a_shared_batch(
    api_settings: Settings, alice: dict[str, str], bob: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sample = sampling_module.sample_token

    def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: Any) -> int:
        if temperature == POISON_TEMPERATURE:  # alice's request breaks inside the decode loop
            raise RuntimeError("poisoned row")
        return real_sample(logits, temperature, top_p, generator)

    monkeypatch.setattr(sampling_module, "sample_token", sample)
    engine = build_serving_engine(api_settings)
    good = [chat_body(f"good {i}") for i in range(6)]
    app = create_app(api_settings, serving_engine=engine)
    with TestClient(app, raise_server_exceptions=False) as client:  # the poisoned request is a 500
        expected = [client.post("/v1/chat/completions", headers=bob, json=b).json() for b in good]
        batches_before = len(engine.batch_sizes)
        with ThreadPoolExecutor(max_workers=len(good) + 1) as pool:
            with engine.scheduler_paused():
                poisoned = pool.submit(
                    client.post,
                    "/v1/chat/completions",
                    headers=alice,
                    json={**chat_body("poison"), "temperature": POISON_TEMPERATURE},
                )
                futures = [
                    pool.submit(client.post, "/v1/chat/completions", headers=bob, json=b) for b in good
                ]
                deadline = time.monotonic() + 60  # a safety net against hanging, not a timing assertion
                while engine.pending_requests() < len(good) + 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
            responses = [f.result() for f in futures]
            assert_error(poisoned.result(), 500)
    engine.close()
    assert engine.batch_sizes[batches_before:] == [len(good) + 1]  # they really shared one batch
    assert [r.status_code for r in responses] == [200] * len(good)
    texts = [r.json()["choices"][0]["message"]["content"] for r in responses]
    assert texts == [e["choices"][0]["message"]["content"] for e in expected]


def chat_body(content: str) -> dict[str, Any]:
    return {
        "model": LLAMA,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 6,
        "temperature": 0,
    }


# item 8: text the tokenizer cannot take, empty classification input ------------------------------
@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/chat/completions",
            '{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800"}]}',
            "messages.0.content",
        ),
        (
            "/v1/chat/completions",
            '{"model": "%s", "messages": [{"role": "user", "content": "ok"}, '
            '{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
            "messages.1.content",
        ),
        ("/v1/completions", '{"model": "%s", "prompt": "a\\ud800"}', "prompt"),
        ("/v1/completions", '{"model": "%s", "prompt": "a", "stop": ["\\ud800"]}', "stop"),
    ],
)
def test_lone_surrogates_are_400s_naming_the_field(
    client: TestClient, alice: dict[str, str], path: str, body: str, param: str
) -> None:
    error = assert_error(raw_post(client, alice, path, body % LLAMA), 400, param=param)
    assert "surrogate" in error["message"]
    assert chat(client, alice, LLAMA).status_code == 200  # and the server goes on serving


@pytest.mark.parametrize("value", ["", [""], ["fine", ""], ["a\ud800"]])
def test_empty_or_broken_classification_input_is_a_400(
    client: TestClient, alice: dict[str, str], value: Any
) -> None:
    body = json.dumps({"model": BERT, "input": value})  # ensure_ascii keeps a surrogate as an escape
    assert_error(raw_post(client, alice, "/v1/classifications", body), 400, param="input")
    ok = client.post("/v1/classifications", headers=alice, json={"model": BERT, "input": ["fine"]})
    assert ok.status_code == 200, ok.text
