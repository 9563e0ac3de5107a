"""/v1/models (base models + the tenant's adapters) and /v1/adapters/{id}/download."""

from __future__ import annotations

import hashlib
import io
import tarfile
from datetime import UTC, datetime
from typing import Any

from api_helpers import assert_error
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from lorasp_core.models import CATALOG
from lorasp_service import base_models
from lorasp_service.auth import create_tenant_with_key
from lorasp_service.orm import Adapter
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "lorasp.json"}


def test_models_list_has_the_catalog_and_own_adapters_only(
    client: TestClient, alice: dict[str, str], bob: dict[str, str], make_adapter: Any
) -> None:
    mine = make_adapter(alice["X-Tenant-Id"])
    theirs = make_adapter(bob["X-Tenant-Id"])
    listed = client.get("/v1/models", headers=alice).json()
    assert listed["object"] == "list"
    by_id = {model["id"]: model for model in listed["data"]}
    assert set(CATALOG) <= set(by_id)
    assert by_id["tiny-random-llama"]["owned_by"] == "lorasp"
    assert by_id["tiny-random-llama"]["object"] == "model"
    assert isinstance(by_id["tiny-random-llama"]["created"], int)
    assert by_id[mine.id]["owned_by"] == alice["X-Tenant-Id"]
    assert by_id[mine.id]["lorasp"]["base_model"] == "tiny-random-llama"
    assert theirs.id not in by_id


def test_models_list_of_a_tenant_without_adapters_is_the_catalog_and_adapters_are_newest_first(
    client: TestClient, db: Session, alice: dict[str, str], make_adapter: Any, api_settings: Settings
) -> None:
    tenant, key = create_tenant_with_key(db, "no-adapters-yet")
    db.commit()
    listed = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    # the catalog first; after it only base models other tests registered for the whole deployment
    assert [model["id"] for model in listed][: len(CATALOG)] == list(CATALOG)
    offered = base_models.offered_models(db, api_settings, tenant.id)
    assert [model["id"] for model in listed] == list(offered)  # base models only: no adapters
    older, newer = make_adapter(alice["X-Tenant-Id"]), make_adapter(alice["X-Tenant-Id"])
    older.created_at = datetime(2025, 1, 2, tzinfo=UTC)
    newer.created_at = datetime(2025, 1, 3, tzinfo=UTC)
    db.commit()
    ids = [model["id"] for model in client.get("/v1/models", headers=alice).json()["data"]]
    assert ids.index(newer.id) < ids.index(older.id)
    assert ids[: len(CATALOG)] == list(CATALOG)


def test_enabled_models_setting_limits_base_models(api_settings: Settings, alice: dict[str, str]) -> None:
    from api.main import create_app

    app = create_app(api_settings.model_copy(update={"enabled_models": ["tiny-random-bert"]}))
    with TestClient(app) as limited:
        ids = [model["id"] for model in limited.get("/v1/models", headers=alice).json()["data"]]
        assert "tiny-random-bert" in ids and "tiny-random-llama" not in ids
        assert_error(limited.get("/v1/models/tiny-random-llama", headers=alice), 404, code="model_not_found")


def test_get_model_accepts_colon_ids(client: TestClient, alice: dict[str, str], make_adapter: Any) -> None:
    adapter = make_adapter(alice["X-Tenant-Id"])
    assert ":" in adapter.id
    got = client.get(f"/v1/models/{adapter.id}", headers=alice)
    assert got.status_code == 200 and got.json()["id"] == adapter.id
    assert client.get("/v1/models/tiny-random-bert", headers=alice).json()["lorasp"]["task"] == "seq-cls"
    assert_error(client.get("/v1/models/ft:nope:x:y", headers=alice), 404, code="model_not_found")


def test_delete_adapter_removes_row_and_blobs(
    client: TestClient, alice: dict[str, str], make_adapter: Any, api_settings: Settings, db: Session
) -> None:
    adapter = make_adapter(alice["X-Tenant-Id"])
    adapter_id, dir_key, archive_key = adapter.id, adapter.storage_key, adapter.archive_key
    storage = BlobStorage(api_settings.blob_dir)
    assert storage.path(dir_key).is_dir() and storage.path(archive_key).is_file()
    response = client.delete(f"/v1/models/{adapter_id}", headers=alice)
    assert response.status_code == 200
    assert response.json() == {"id": adapter_id, "object": "model", "deleted": True}
    db.expunge_all()
    assert db.get(Adapter, adapter_id) is None
    assert not storage.path(dir_key).exists()
    assert not storage.path(archive_key).exists()
    assert_error(client.get(f"/v1/models/{adapter_id}", headers=alice), 404)


def test_base_models_cannot_be_deleted(client: TestClient, alice: dict[str, str]) -> None:
    response = client.delete("/v1/models/tiny-random-llama", headers=alice)
    assert_error(response, 403, code="model_not_deletable")
    assert_error(client.delete("/v1/models/no-such-model", headers=alice), 404)


def test_download_returns_the_archive_with_checksum(
    client: TestClient, alice: dict[str, str], make_adapter: Any
) -> None:
    adapter = make_adapter(alice["X-Tenant-Id"])
    response = client.get(f"/v1/adapters/{adapter.id}/download", headers=alice)
    assert response.status_code == 200, response.text
    assert response.headers["x-checksum-sha256"] == hashlib.sha256(response.content).hexdigest()
    assert response.headers["x-checksum-sha256"] == adapter.sha256
    assert ".tar.gz" in response.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        assert set(archive.getnames()) == ADAPTER_FILES


def test_download_builds_a_missing_archive(
    client: TestClient, alice: dict[str, str], make_adapter: Any, db: Session
) -> None:
    adapter = make_adapter(alice["X-Tenant-Id"], with_archive=False)
    response = client.get(f"/v1/adapters/{adapter.id}/download", headers=alice)
    assert response.status_code == 200, response.text
    db.expire_all()
    row = db.get(Adapter, adapter.id)
    assert row is not None and row.archive_key is not None
    assert row.sha256 == hashlib.sha256(response.content).hexdigest() == response.headers["x-checksum-sha256"]
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        assert set(archive.getnames()) == ADAPTER_FILES


def test_download_unknown_or_base_model(client: TestClient, alice: dict[str, str]) -> None:
    assert_error(client.get("/v1/adapters/ft:none:x:y/download", headers=alice), 404)
    response = client.get("/v1/adapters/tiny-random-llama/download", headers=alice)
    assert_error(response, 400, code="not_an_adapter")
