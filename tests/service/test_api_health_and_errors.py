"""/health, the error envelope for unknown routes and server errors, OpenAPI docs, and a battery of
malformed inputs that must all be answered with a 4xx (the TestClient re-raises any server error)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from api_helpers import assert_error, chat_rows, jsonl, upload
from fastapi.testclient import TestClient

from api.main import create_app
from lorasp_service.settings import Settings

JOBS = "/v1/fine_tuning/jobs"


def test_health_ok_with_database_and_redis(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}


def test_health_503_names_the_unreachable_broker(api_settings: Settings) -> None:
    app = create_app(api_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    with TestClient(app) as client:
        response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["database"] == "ok"
    assert body["broker"].startswith("unreachable")


def test_health_503_names_the_unreachable_database(api_settings: Settings) -> None:
    missing_db = api_settings.database_url.rsplit("/", 1)[0] + "/lorasp_no_such_database"
    app = create_app(api_settings.model_copy(update={"database_url": missing_db}))
    with TestClient(app) as client:
        response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["database"].startswith("unreachable") and response.json()["broker"] == "ok"


def test_health_with_the_filesystem_broker(api_settings: Settings, tmp_path: Path) -> None:
    settings = api_settings.model_copy(update={"broker_url": "filesystem://", "home": tmp_path})
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").json()["broker"] == "ok"
    assert (tmp_path / "broker").is_dir()


def test_unknown_routes_and_methods_use_the_envelope(client: TestClient, alice: dict[str, str]) -> None:
    assert_error(client.get("/v1/nothing-here", headers=alice), 404, code="unknown_url")
    assert_error(client.get("/nothing-here"), 404, code="unknown_url")
    assert_error(client.put("/v1/files", headers=alice), 405, code="method_not_allowed")


def test_unexpected_errors_are_a_500_envelope_without_details(api_settings: Settings) -> None:
    app = create_app(api_settings)

    def explode() -> None:
        raise RuntimeError("secret internal detail")

    app.add_api_route("/boom", explode)
    with TestClient(app, raise_server_exceptions=False) as client:
        error = assert_error(client.get("/boom"), 500)
    assert error["type"] == "server_error" and "secret" not in error["message"]


def test_openapi_documents_every_route_with_tags(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/files",
        "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events",
        "/v1/models/{model_id}",
        "/v1/adapters/{adapter_id}/download",
        "/health",
    ):
        assert path in spec["paths"], path
    assert {tag["name"] for tag in spec["tags"]} >= {"files", "fine-tuning", "models", "adapters", "health"}
    assert client.get("/docs").status_code == 200


MALFORMED_JOB_BODIES: list[Any] = [
    {"model": 5, "training_file": "file-x"},
    {"model": "tiny-random-llama", "training_file": ["file-x"]},
    {"model": "tiny-random-llama", "training_file": "file-x", "hyperparameters": "fast"},
    {"model": "tiny-random-llama", "training_file": "file-x", "hyperparameters": {"n_epochs": True}},
    {"model": "tiny-random-llama", "training_file": "file-x", "hyperparameters": {"n_epochs": 10**30}},
    {"model": "tiny-random-llama", "training_file": "file-x", "method": "lorasp"},
    {"model": "tiny-random-llama", "training_file": "file-x", "method": {"type": "lorasp", "lorasp": "x"}},
    {"model": "tiny-random-llama", "training_file": "file-x", "method": {"type": "unknown"}},
    {"model": "tiny-random-llama", "training_file": "file-x", "method": {}},
    {"model": "tiny-random-llama", "training_file": "file-x", "metadata": {"a": 1}},
    {"model": "tiny-random-llama", "training_file": "file-x", "metadata": ["a"]},
    {"model": "tiny-random-llama", "training_file": "file-x", "seed": 1e30},
    {"model": "tiny-random-llama", "training_file": "file-x", "seed": 2**40},
    {"model": "tiny-random-llama", "training_file": "file-x", "suffix": 5},
    {"model": "tiny-random-llama", "training_file": "file-x", "integrations": [{"type": "wandb"}]},
    {"model": "", "training_file": ""},
    # Text PostgreSQL cannot store must be refused up front, not fail in the driver.
    {"model": "tiny-random-llama", "training_file": "file-x", "metadata": {"k": "nul\u0000"}},
    {"model": "tiny-random-llama", "training_file": "file-x", "metadata": {"\ud800": "v"}},
    {"model": "tiny-\ud800", "training_file": "file-x"},
    {"model": "tiny-random-llama", "training_file": "file-x", "suffix": "a\u0000"},
    "just a string",
    None,
    [],
]


@pytest.mark.parametrize("body", MALFORMED_JOB_BODIES)
def test_malformed_job_bodies_are_400(client: TestClient, alice: dict[str, str], body: Any) -> None:
    # json.dumps escapes lone surrogates as \\udXXX (httpx would refuse to encode them).
    raw = json.dumps(body).encode()
    assert_error(client.post(JOBS, headers={**alice, "Content-Type": "application/json"}, content=raw), 400)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "tiny-random-llama", "training_file": "f", '
        b'"hyperparameters": {"learning_rate_multiplier": NaN}}',
        b'{"model": "tiny-random-llama", "training_file": "f", "method": {"type": "lorasp", '
        b'"lorasp": {"hyperparameters": {"alpha": Infinity}}}}',
        b"\xff\xfe not utf-8",
        b"{" * 5000,
        b"",
    ],
)
def test_malformed_raw_json_is_400(client: TestClient, alice: dict[str, str], raw: bytes) -> None:
    headers = {**alice, "Content-Type": "application/json"}
    assert_error(client.post(JOBS, headers=headers, content=raw), 400)


@pytest.mark.parametrize("training_file", ["file-\u0000", "file-\ud800", "file-\udfff", "x" * 64])
def test_impossible_file_ids_are_4xx_naming_training_file(
    client: TestClient, alice: dict[str, str], training_file: str
) -> None:
    raw = json.dumps({"model": "tiny-random-llama", "training_file": training_file}).encode()
    response = client.post(JOBS, headers={**alice, "Content-Type": "application/json"}, content=raw)
    # 404 (no such file) or 400 (the JSON parser refuses a lone low surrogate): never the database.
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["param"] == "training_file"


def test_non_json_content_type_is_400(client: TestClient, alice: dict[str, str]) -> None:
    headers = {**alice, "Content-Type": "text/plain"}
    assert_error(client.post(JOBS, headers=headers, content=b'{"model": "x"}'), 400)


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=-1", "limit=101", "limit=99999999999999999999999", "limit=abc", "limit=1.5"]
)
def test_bad_paging_parameters_are_400_naming_limit(
    client: TestClient, alice: dict[str, str], query: str
) -> None:
    assert_error(client.get(f"{JOBS}?{query}", headers=alice), 400, param="limit")
    assert_error(client.get(f"/v1/files?{query.replace('101', '10001')}", headers=alice), 400, param="limit")


def test_odd_uploads_are_4xx(client: TestClient, alice: dict[str, str]) -> None:
    # A filename with path parts keeps only its last part.
    response = upload(client, alice, jsonl(chat_rows()), filename="../../etc/evil.jsonl")
    assert response.status_code == 200 and response.json()["filename"] == "evil.jsonl"
    # The file sent as a plain form field (no filename) is not a file.
    response = client.post("/v1/files", headers=alice, data={"file": "text", "purpose": "fine-tune"})
    assert_error(response, 400, param="file")
    assert_error(upload(client, alice, bytes(range(256)) * 4, filename="blob.bin"), 400, param="file")
    assert_error(upload(client, alice, b"\n\n\n"), 400, param="file")
    multipart = {"Content-Type": "multipart/form-data; boundary=xyz"}
    assert_error(client.post("/v1/files", headers={**alice, **multipart}, content=b"--xyz\r\ngarbage"), 400)


def test_odd_ids_and_cursors_are_4xx(client: TestClient, alice: dict[str, str]) -> None:
    for path in (
        "/v1/files/%00",
        "/v1/files/" + "x" * 5000,
        f"{JOBS}/%F0%9F%92%A5",
        f"{JOBS}/%00/cancel",
        f"{JOBS}/%ED%A0%80/events",
        f"{JOBS}?after=%00",
        "/v1/files?after=%00",
        "/v1/files?purpose=%00",
        "/v1/models/ft:..%2F..%2Fetc",
        "/v1/models/%00",
        "/v1/adapters/%2e%2e/download",
        "/v1/adapters/%00/download",
    ):
        response = client.get(path, headers=alice)
        assert 400 <= response.status_code < 500, path
        assert "error" in response.json()
