"""The internal API of `lorasp inference` on a real engine (tiny llama, SQLite registry): the secret,
NDJSON generation, engine errors as typed payloads, and adapters loaded by registry id on demand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from api.inference_tier import wire
from api.inference_tier.remote_stream import RemoteGenerationStream
from api.inference_tier.server import InferenceProcess, create_inference_app
from lorasp_core.adapters import apply_lorasp, save_adapter
from lorasp_core.config import LoraSPConfig
from lorasp_core.models import TINY_LLAMA_NAME, tiny_random_llama
from lorasp_core.serving import GenerationChunk, UnknownAdapterError
from lorasp_service.db import migrate, session_scope
from lorasp_service.orm import Adapter, Tenant
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

SECRET = "inference-test-secret"
AUTH = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(_env_file=None, home=tmp_path_factory.mktemp("inference"), inference_secret=SECRET)  # type: ignore[call-arg]
    migrate(settings)
    return settings


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    process = InferenceProcess(settings, "inference-test")
    with TestClient(create_inference_app(settings, process)) as client:
        yield client
    process.engine.close()


def register_adapter(settings: Settings, scratch: Path) -> str:
    """A LoRA-SP adapter in storage and its registry row, as the worker leaves them."""
    model = apply_lorasp(tiny_random_llama(seed=0), LoraSPConfig(r=2, mask_seed=5, init_seed=5))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B_trainable" in name:
                parameter.fill_(0.3)
    save_adapter(model, scratch / "adapter", base_model_name_or_path=TINY_LLAMA_NAME, task_type="causal-lm")
    BlobStorage(settings.blob_dir).put_dir("adapters/server-test", scratch / "adapter")
    adapter_id = f"ft:{TINY_LLAMA_NAME}:server-test"
    with session_scope(settings) as session:
        session.add(Tenant(id="tenant-server-test", name="server-test"))
        session.flush()
        session.add(
            Adapter(
                id=adapter_id,
                tenant_id="tenant-server-test",
                base_model=TINY_LLAMA_NAME,
                task="causal-lm",
                storage_key="adapters/server-test",
                sha256="0" * 64,
                bytes=1,
                rank=2,
            )
        )
        session.commit()
    return adapter_id


def generate(client: TestClient, **body: object) -> tuple[int, list[dict[str, object]]]:
    response = client.post("/generate", headers=AUTH, json={"model": TINY_LLAMA_NAME, "prompt": "ab", **body})
    if response.status_code != 200:
        return response.status_code, [response.json()]
    assert response.headers["content-type"].startswith(wire.NDJSON_MEDIA_TYPE)
    assert response.headers["x-lorasp-inference-process"] == "inference-test"
    return 200, [json.loads(line) for line in response.text.splitlines() if line]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_every_route_needs_the_secret(client: TestClient, headers: dict[str, str]) -> None:
    assert client.get("/health", headers=headers).status_code == 401
    assert client.post("/generate", headers=headers, json={}).status_code == 401


def test_generation_streams_chunks_as_ndjson(client: TestClient) -> None:
    status, events = generate(client, max_tokens=4, ignore_eos=True)
    assert status == 200
    chunks = [wire.from_wire(GenerationChunk, event["chunk"]) for event in events]
    assert [chunk.token_count for chunk in chunks][-1] == 4
    assert chunks[-1].finish_reason == "length" and all(c.finish_reason is None for c in chunks[:-1])


def test_n_choices_cross_the_tier_and_the_remote_stream_ends_after_the_last(client: TestClient) -> None:
    body = {"model": TINY_LLAMA_NAME, "prompt": "ab", "max_tokens": 3, "ignore_eos": True, "n": 2}
    body |= {"temperature": 1.0, "seed": 7, "logprobs": True, "top_logprobs": 2}
    response = client.post("/generate", headers=AUTH, json=body)
    broken: list[str] = []
    stream = RemoteGenerationStream(response, "inference-test", lambda: broken.append("down"), choices=2)
    chunks = list(stream)  # would raise "ended the stream before its last chunk" if it miscounted
    assert not broken
    finished = sorted(c.index for c in chunks if c.finish_reason is not None)
    assert finished == [0, 1]
    assert all(c.logprobs and len(c.logprobs[0].top_logprobs) == 2 for c in chunks if c.token_count)


def test_a_bad_request_is_a_typed_400_before_streaming(client: TestClient) -> None:
    status, [payload] = generate(client, max_tokens=0)
    assert status == 400
    error = wire.error_from_wire(payload["error"])
    assert type(error) is ValueError and "max_tokens must be >= 1" in str(error)


def test_an_adapter_missing_from_the_registry_is_unknown(client: TestClient) -> None:
    status, [payload] = generate(client, adapter_id=f"ft:{TINY_LLAMA_NAME}:nobody")
    assert status == 404
    assert isinstance(wire.error_from_wire(payload["error"]), UnknownAdapterError)


def test_a_registered_adapter_is_loaded_on_its_first_request(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    adapter_id = register_adapter(settings, tmp_path)
    assert client.get("/health", headers=AUTH).json()["hot"] == []
    status, events = generate(client, adapter_id=adapter_id, max_tokens=3, ignore_eos=True)
    assert status == 200 and len(events) >= 1
    hot = client.get("/health", headers=AUTH).json()["hot"]
    assert hot == [{"adapter_id": adapter_id, "base_model": TINY_LLAMA_NAME}]
    unloaded = client.post(f"/adapters/{adapter_id}/unload", headers=AUTH)
    assert unloaded.status_code == 200
    again = client.post(f"/adapters/{adapter_id}/unload", headers=AUTH)
    assert again.status_code == 404 and again.json()["error"]["kind"] == "unknown_adapter"
