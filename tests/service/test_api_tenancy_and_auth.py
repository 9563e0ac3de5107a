"""API keys (missing / invalid / revoked → 401) and tenant isolation: another tenant's id is a 404."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import assert_error, chat_rows, create_job, jsonl, upload
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from lorasp_service.auth import create_tenant_with_key, revoke_api_key, tenant_for_key
from lorasp_service.ids import new_id
from lorasp_service.jobs import add_event
from lorasp_service.orm import ApiKey, Checkpoint, Job

PROTECTED = [
    ("GET", "/v1/files"),
    ("POST", "/v1/files"),
    ("GET", "/v1/files/file-x"),
    ("GET", "/v1/fine_tuning/jobs"),
    ("POST", "/v1/fine_tuning/jobs"),
    ("POST", "/v1/fine_tuning/jobs/ftjob-x/cancel"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-x/events"),
    ("GET", "/v1/models"),
    ("DELETE", "/v1/models/ft:a:b:c"),
    ("GET", "/v1/adapters/ft:a:b:c/download"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer sk-lorasp-not-a-real-key-000000000000000", "Basic abc", "Bearer "]
)
def test_requests_without_a_valid_key_are_401(
    client: TestClient, method: str, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.request(method, path, headers=headers)
    error = assert_error(response, 401, code="invalid_api_key")
    assert error["type"] == "invalid_request_error"


def test_keys_are_hashed_and_revocation_takes_effect(client: TestClient, db: Session) -> None:
    tenant, key = create_tenant_with_key(db, "revocable")
    db.commit()
    assert key.startswith("sk-lorasp-") and len(key) > 40
    stored = db.query(ApiKey).filter(ApiKey.tenant_id == tenant.id).one()
    assert key not in (stored.key_hash, stored.key_prefix) and len(stored.key_hash) == 64
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/files", headers=headers).status_code == 200
    same_tenant, second_key = create_tenant_with_key(db, "revocable")
    assert same_tenant.id == tenant.id and second_key != key
    assert revoke_api_key(db, key)
    db.commit()
    assert tenant_for_key(db, key) is None and tenant_for_key(db, second_key) is not None
    assert_error(client.get("/v1/files", headers=headers), 401, code="invalid_api_key")
    # GET /v1/models authenticates in its own statement (the key lookup joined to the listing).
    assert_error(client.get("/v1/models", headers=headers), 401, code="invalid_api_key")
    second = {"Authorization": f"Bearer {second_key}"}
    assert client.get("/v1/models", headers=second).status_code == 200


@pytest.fixture()
def alices_resources(
    client: TestClient, alice: dict[str, str], db: Session, make_adapter: Any
) -> dict[str, str]:
    file_id = upload(client, alice, jsonl(chat_rows())).json()["id"]
    job_id = create_job(client, alice, file_id).json()["id"]
    job = db.get(Job, job_id)
    assert job is not None
    event = add_event(db, job.id, "hello")
    checkpoint = Checkpoint(id=new_id("ftckpt"), job_id=job_id, step=1, storage_key=f"ck/{job_id}")
    db.add(checkpoint)
    db.commit()
    adapter = make_adapter(alice["X-Tenant-Id"])
    return {
        "file": file_id,
        "job": job_id,
        "event": event.id,
        "checkpoint": checkpoint.id,
        "adapter": adapter.id,
    }


def test_another_tenants_resources_are_404_for_every_endpoint(
    client: TestClient, alice: dict[str, str], bob: dict[str, str], alices_resources: dict[str, str]
) -> None:
    ids = alices_resources
    jobs = "/v1/fine_tuning/jobs"
    attempts = [
        ("GET", f"/v1/files/{ids['file']}"),
        ("GET", f"/v1/files/{ids['file']}/content"),
        ("DELETE", f"/v1/files/{ids['file']}"),
        ("GET", f"{jobs}/{ids['job']}"),
        ("POST", f"{jobs}/{ids['job']}/cancel"),
        ("GET", f"{jobs}/{ids['job']}/events"),
        ("GET", f"{jobs}/{ids['job']}/checkpoints"),
        ("GET", f"{jobs}?after={ids['job']}"),
        ("GET", f"/v1/files?after={ids['file']}"),
        ("GET", f"/v1/models/{ids['adapter']}"),
        ("DELETE", f"/v1/models/{ids['adapter']}"),
        ("GET", f"/v1/adapters/{ids['adapter']}/download"),
    ]
    for method, path in attempts:
        assert_error(client.request(method, path, headers=bob), 404)
    # Bob's own job cannot page through Alice's events/checkpoints by cursor either.
    bob_file = upload(client, bob, jsonl(chat_rows())).json()["id"]
    bob_job = create_job(client, bob, bob_file).json()["id"]
    assert_error(client.get(f"{jobs}/{bob_job}/events?after={ids['event']}", headers=bob), 404)
    assert_error(client.get(f"{jobs}/{bob_job}/checkpoints?after={ids['checkpoint']}", headers=bob), 404)
    # Alice's file cannot be used for Bob's job.
    assert_error(create_job(client, bob, ids["file"]), 404, param="training_file")
    # Lists never show Alice's things to Bob.
    assert ids["file"] not in str(client.get("/v1/files", headers=bob).json())
    assert ids["job"] not in str(client.get(jobs, headers=bob).json())
    assert ids["adapter"] not in str(client.get("/v1/models", headers=bob).json())
    # ...and everything is still there for Alice.
    for method, path in attempts[:2] + attempts[3:4] + attempts[5:7] + attempts[9:10]:
        assert client.request(method, path, headers=alice).status_code == 200, path
