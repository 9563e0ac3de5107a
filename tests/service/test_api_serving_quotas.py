"""Per-tenant adapter quotas (issue 12): one tenant cannot take every adapter slot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import assert_error
from fastapi.testclient import TestClient
from serving_api_helpers import BERT, make_bert_adapter, make_llama_adapter, register_adapter
from sqlalchemy.orm import Session

from api.main import create_app
from lorasp_service.settings import Settings

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hostile") / "good"
    make_llama_adapter(directory, 31)
    return directory


def chat(client: TestClient, headers: dict[str, str], model: str, **body: Any) -> Any:
    payload = {"model": model, "messages": MESSAGES, "max_tokens": 4, "temperature": 0, **body}
    return client.post("/v1/chat/completions", headers=headers, json=payload)


# item 4: per-tenant adapter quotas ---------------------------------------------------------------
@pytest.fixture()
def quota_client(api_settings: Settings) -> Iterator[TestClient]:
    settings = api_settings.model_copy(
        update={
            "serving_max_adapters": 4,
            "serving_max_pinned_per_tenant": 2,
            "serving_max_resident_per_tenant": 3,
        }
    )
    with TestClient(create_app(settings)) as client:
        yield client


def load(client: TestClient, headers: dict[str, str], adapter_id: str, **body: Any) -> Any:
    return client.post(f"/v1/adapters/{adapter_id}/load", headers=headers, json=body or None)


def loaded_ids(client: TestClient, headers: dict[str, str]) -> list[str]:
    return [item["id"] for item in client.get("/v1/adapters/loaded", headers=headers).json()["data"]]


def test_one_tenant_cannot_take_every_adapter_slot(
    quota_client: TestClient,
    db: Session,
    api_settings: Settings,
    alice: dict[str, str],
    bob: dict[str, str],
    good_dir: Path,
) -> None:
    a1, a2, a3, a4 = (register_adapter(db, api_settings, alice["X-Tenant-Id"], good_dir) for _ in range(4))
    b1, b2 = (register_adapter(db, api_settings, bob["X-Tenant-Id"], good_dir) for _ in range(2))
    assert load(quota_client, alice, a1, pin=True).status_code == 200
    assert load(quota_client, alice, a2, pin=True).status_code == 200
    for pinned_too_many in (load(quota_client, alice, a3, pin=True), load(quota_client, alice, a4, pin=True)):
        error = assert_error(pinned_too_many, 429, param="adapter_id", code="adapter_quota_exceeded")
        assert "Your tenant's quota of 2 pinned adapters" in error["message"]
        assert bob["X-Tenant-Id"] not in error["message"] and alice["X-Tenant-Id"] not in error["message"]
    assert load(quota_client, alice, a3).status_code == 200
    # A resident adapter cannot be pinned past the quota either (the cache-hit path).
    assert_error(load(quota_client, alice, a3, pin=True), 429, code="adapter_quota_exceeded")
    # At her resident quota (3), alice's next load evicts her own least recently used adapter.
    assert load(quota_client, alice, a4).status_code == 200
    assert loaded_ids(quota_client, alice) == [a1, a2, a4]
    # Bob is served on his own adapters, and may pin his own quota's worth.
    for model in (b1, b2):
        assert chat(quota_client, bob, model).status_code == 200
        assert load(quota_client, bob, model, pin=True).json()["pinned"] is True
    assert set(loaded_ids(quota_client, bob)) == {b1, b2}
    assert set(loaded_ids(quota_client, alice)) <= {a1, a2, a4} and {a1, a2} <= set(
        loaded_ids(quota_client, alice)
    )
    # Unpinning gives alice her pin back.
    assert load(quota_client, alice, a1, pin=False).json()["pinned"] is False
    assert load(quota_client, alice, a4, pin=True).json()["pinned"] is True


def test_seq_cls_adapter_counts_against_its_owner_only(
    quota_client: TestClient,
    db: Session,
    api_settings: Settings,
    alice: dict[str, str],
    bob: dict[str, str],
    tmp_path: Path,
) -> None:
    make_bert_adapter(tmp_path / "bert", 3, ["no", "yes"])
    ids = [
        register_adapter(
            db,
            api_settings,
            tenant["X-Tenant-Id"],
            tmp_path / "bert",
            base_model=BERT,
            task="seq-cls",
            label_names=["no", "yes"],
        )
        for tenant in (alice, alice, alice, alice, bob)
    ]
    for model in ids[:4]:  # alice cycles through four adapters within her quota of three
        response = quota_client.post(
            "/v1/classifications", headers=alice, json={"model": model, "input": "x"}
        )
        assert response.status_code == 200, response.text
    assert len(loaded_ids(quota_client, alice)) == 3
    bob_says = quota_client.post("/v1/classifications", headers=bob, json={"model": ids[4], "input": "x"})
    assert bob_says.status_code == 200, bob_says.text


def test_quota_errors_are_documented(quota_client: TestClient) -> None:
    paths = quota_client.get("/openapi.json").json()["paths"]
    for path in ("/v1/adapters/{adapter_id}/load", "/v1/chat/completions", "/v1/classifications"):
        assert "429" in paths[path]["post"]["responses"], path
