"""/v1/adapters/{id}/load, /unload, /v1/adapters/loaded: hot-loading, eviction, pinning, bad adapters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import assert_error
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file
from serving_api_helpers import adapter_path, make_llama_adapter, register_adapter
from sqlalchemy.orm import Session

from api.main import create_app
from lorasp_service.settings import Settings

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("serving_adapters") / "good"
    make_llama_adapter(directory, 11)
    return directory


@pytest.fixture()
def small_client(api_settings: Settings) -> Iterator[TestClient]:
    """A fresh app (own engine) with two adapter slots and max rank 8."""
    settings = api_settings.model_copy(update={"serving_max_adapters": 2, "serving_max_rank": 8})
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture()
def register(db: Session, api_settings: Settings, alice: dict[str, str], good_dir: Path) -> Any:
    def make(directory: Path | None = None, tenant: dict[str, str] = alice) -> str:
        return register_adapter(db, api_settings, tenant["X-Tenant-Id"], directory or good_dir)

    return make


def load(client: TestClient, headers: dict[str, str], adapter_id: str, **body: Any) -> Any:
    return client.post(f"/v1/adapters/{adapter_id}/load", headers=headers, json=body or None)


def loaded_ids(client: TestClient, headers: dict[str, str]) -> list[str]:
    listed = client.get("/v1/adapters/loaded", headers=headers).json()
    assert listed["object"] == "list"
    return [item["id"] for item in listed["data"]]


def chat(client: TestClient, headers: dict[str, str], model: str) -> Any:
    payload = {"model": model, "messages": MESSAGES, "max_tokens": 4, "temperature": 0}
    return client.post("/v1/chat/completions", headers=headers, json=payload)


def test_load_unload_and_loaded_with_metrics(
    small_client: TestClient, alice: dict[str, str], register: Any
) -> None:
    adapter_id = register()
    response = load(small_client, alice, adapter_id)
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["id"] == adapter_id and info["object"] == "adapter"
    assert info["base_model"] == "tiny-random-llama" and info["rank"] == 4 and info["bytes"] > 0
    assert info["pinned"] is False and info["load_ms"] > 0 and info["requests"] == 0
    assert chat(small_client, alice, adapter_id).status_code == 200
    listed = small_client.get("/v1/adapters/loaded", headers=alice).json()["data"]
    (entry,) = [item for item in listed if item["id"] == adapter_id]
    assert entry["requests"] == 1 and 0 < entry["tokens_generated"] <= 4
    assert entry["mean_latency_ms"] > 0 and entry["hits"] >= 1
    assert entry["last_used_at"] >= entry["loaded_at"]

    unloaded = small_client.post(f"/v1/adapters/{adapter_id}/unload", headers=alice)
    assert unloaded.status_code == 200
    assert unloaded.json() == {"id": adapter_id, "object": "adapter", "unloaded": True}
    assert adapter_id not in loaded_ids(small_client, alice)
    again = small_client.post(f"/v1/adapters/{adapter_id}/unload", headers=alice)
    assert again.status_code == 200 and again.json()["unloaded"] is False
    # Chat loads it again on demand.
    assert chat(small_client, alice, adapter_id).status_code == 200
    assert adapter_id in loaded_ids(small_client, alice)


def test_lru_eviction_keeps_pinned_and_all_pinned_is_503(
    small_client: TestClient, alice: dict[str, str], register: Any
) -> None:
    first, second, third, fourth = (register() for _ in range(4))
    assert load(small_client, alice, first, pin=True).json()["pinned"] is True
    assert load(small_client, alice, second).status_code == 200
    assert load(small_client, alice, third).status_code == 200  # evicts `second`, the unpinned LRU
    assert loaded_ids(small_client, alice) == [first, third]
    assert load(small_client, alice, third, pin=True).json()["pinned"] is True
    assert_error(load(small_client, alice, fourth), 503, code="adapter_cache_full")
    assert_error(chat(small_client, alice, fourth), 503, code="adapter_cache_full")
    assert loaded_ids(small_client, alice) == [first, third]
    # Unpinning frees a slot for the next load.
    assert load(small_client, alice, first, pin=False).json()["pinned"] is False
    assert load(small_client, alice, fourth).status_code == 200
    assert set(loaded_ids(small_client, alice)) == {third, fourth}


def _corrupt(directory: Path, tensors: dict[str, Any] | None = None, garbage: bool = False) -> None:
    weights = directory / "adapter_model.safetensors"
    if garbage:
        weights.write_bytes(b"this is not a safetensors file" * 10)
    else:
        assert tensors is not None
        save_file(tensors, str(weights))


@pytest.mark.parametrize("problem", ["garbage", "rank", "shapes", "target", "config"])
def test_corrupt_or_mismatched_adapter_is_400_and_server_keeps_serving(
    small_client: TestClient,
    alice: dict[str, str],
    register: Any,
    db: Session,
    api_settings: Settings,
    tmp_path: Path,
    problem: str,
) -> None:
    if problem == "rank":
        make_llama_adapter(tmp_path / "bad", 12, r=16)  # over the server's max rank of 8
    else:
        make_llama_adapter(tmp_path / "bad", 12)
    bad_id = register(tmp_path / "bad")
    directory = adapter_path(db, api_settings, bad_id)
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    if problem == "garbage":
        _corrupt(directory, garbage=True)
    elif problem == "shapes":  # lora_A of a base model with another hidden size
        key = next(k for k in tensors if k.endswith("lora_A.weight"))
        tensors[key] = tensors[key].new_ones((tensors[key].shape[0], 96))
        _corrupt(directory, tensors)
    elif problem == "target":
        renamed = {k.replace("q_proj", "nope_proj"): v for k, v in tensors.items()}
        _corrupt(directory, renamed)
    elif problem == "config":
        (directory / "adapter_config.json").write_text("{not json")
    error = assert_error(load(small_client, alice, bad_id), 400, param="adapter_id", code="invalid_adapter")
    expected = {
        "garbage": "safetensors",
        "rank": "max_rank",
        "shapes": "do not fit",
        "target": "nope_proj",
        "config": "adapter_config.json",
    }[problem]
    assert expected in error["message"]
    assert str(directory) not in error["message"]  # no server paths
    assert_error(chat(small_client, alice, bad_id), 400, param="model", code="invalid_adapter")
    good = register()
    assert chat(small_client, alice, good).status_code == 200
    assert bad_id not in loaded_ids(small_client, alice)


def test_missing_adapter_files_are_404(
    small_client: TestClient, alice: dict[str, str], register: Any, db: Session, api_settings: Settings
) -> None:
    adapter_id = register()
    directory = adapter_path(db, api_settings, adapter_id)
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()
    assert_error(load(small_client, alice, adapter_id), 404, code="adapter_files_missing")


def test_tenant_isolation(
    small_client: TestClient, alice: dict[str, str], bob: dict[str, str], register: Any
) -> None:
    adapter_id = register()
    assert load(small_client, alice, adapter_id).status_code == 200
    assert_error(load(small_client, bob, adapter_id), 404, param="adapter_id", code="model_not_found")
    assert_error(small_client.post(f"/v1/adapters/{adapter_id}/unload", headers=bob), 404)
    assert_error(chat(small_client, bob, adapter_id), 404, param="model")
    assert adapter_id not in loaded_ids(small_client, bob)
    assert adapter_id in loaded_ids(small_client, alice)
    assert_error(load(small_client, alice, "ft:tiny-random-llama:x:unknown1"), 404)


def test_bad_load_body_is_400(small_client: TestClient, alice: dict[str, str], register: Any) -> None:
    adapter_id = register()
    response = small_client.post(f"/v1/adapters/{adapter_id}/load", headers=alice, json={"pin": "yes"})
    assert_error(response, 400, param="pin")
    response = small_client.post(f"/v1/adapters/{adapter_id}/load", headers=alice, json={"pinned": True})
    assert_error(response, 400, param="pinned")


def test_deleting_a_model_unloads_it(small_client: TestClient, alice: dict[str, str], register: Any) -> None:
    adapter_id = register()
    assert load(small_client, alice, adapter_id, pin=True).status_code == 200
    assert small_client.delete(f"/v1/models/{adapter_id}", headers=alice).status_code == 200
    assert adapter_id not in loaded_ids(small_client, alice)
    assert_error(chat(small_client, alice, adapter_id), 404, param="model")
    engine = small_client.app.state.lorasp.started_serving  # type: ignore[attr-defined]
    assert adapter_id not in [info.adapter_id for info in engine.loaded_adapters()]


def test_full_wait_queue_is_503_with_retry_after(
    api_settings: Settings, alice: dict[str, str], register: Any
) -> None:
    """Past LORASP_SERVING_MAX_WAITING_REQUESTS (0 here: every request finds the queue full) a
    generation is refused before queueing: OpenAI's error shape, 503, and when to retry."""
    adapter_id = register()
    settings = api_settings.model_copy(update={"serving_max_waiting_requests": 0})
    with TestClient(create_app(settings)) as client:
        response = chat(client, alice, adapter_id)
        error = assert_error(response, 503, code="server_overloaded")
        assert error["type"] == "server_error"
        assert int(response.headers["Retry-After"]) >= 1
        # The refused request handed its adapter back: unloading frees the slot at once.
        assert client.post(f"/v1/adapters/{adapter_id}/unload", headers=alice).json()["unloaded"] is True
        assert adapter_id not in loaded_ids(client, alice)
