"""Concurrent requests on one file: DELETE vs DELETE and job creation vs DELETE, 20 rounds each.

Every request of a round waits on a barrier, then all go at once through the app (real threads, the real
PostgreSQL database, and the embedded SQLite default), so the locks taken by `delete_file` and
`lock_files_for_job` are what decides.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from api_helpers import (
    TEST_MAX_UPLOAD_BYTES,
    assert_error,
    chat_rows,
    create_job,
    jsonl,
    run_together,
    upload,
)
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import get_enqueue
from api.main import create_app
from lorasp_service.auth import create_tenant_with_key
from lorasp_service.db import make_engine, migrate
from lorasp_service.orm import File, Job
from lorasp_service.settings import Settings

ROUNDS = 20
DELETERS = 20


def _new_file(client: TestClient, headers: dict[str, str]) -> str:
    response = upload(client, headers, jsonl(chat_rows()))
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _no_server_path(response: Any, settings: Settings) -> None:
    assert str(settings.blob_dir) not in response.text and str(settings.home) not in response.text


def _delete_race(client: TestClient, tenant: dict[str, str], settings: Settings) -> None:
    for _ in range(ROUNDS):
        file_id = _new_file(client, tenant)
        responses = run_together([partial(client.delete, f"/v1/files/{file_id}", headers=tenant)] * DELETERS)
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200] + [404] * (DELETERS - 1), statuses
        for response in responses:
            _no_server_path(response, settings)
            if response.status_code == 404:
                assert_error(response, 404, param="file_id", code="not_found")
        assert not list((settings.blob_dir / "files" / tenant["X-Tenant-Id"]).glob(f"{file_id}*"))


def _job_race(client: TestClient, tenant: dict[str, str], settings: Settings, db: Session) -> None:
    outcomes = {"job": 0, "delete": 0}
    for _ in range(ROUNDS):
        file_id = _new_file(client, tenant)
        job, deleted = run_together(
            [
                partial(create_job, client, tenant, file_id),
                partial(client.delete, f"/v1/files/{file_id}", headers=tenant),
            ]
        )
        _no_server_path(job, settings)
        _no_server_path(deleted, settings)
        if job.status_code == 200:
            # the job came first: the file is in use, and the error names the job
            error = assert_error(deleted, 409, param="file_id", code="file_in_use")
            assert job.json()["id"] in error["message"]
            assert client.get(f"/v1/files/{file_id}", headers=tenant).status_code == 200
            outcomes["job"] += 1
        else:
            # the delete came first: the job creation no longer finds the file
            assert deleted.status_code == 200, (job.text, deleted.text)
            assert_error(job, 404, param="training_file", code="not_found")
            outcomes["delete"] += 1
    assert sum(outcomes.values()) == ROUNDS
    db.expire_all()
    orphaned = db.scalars(
        select(Job.id)
        .join(File, File.id == Job.training_file_id)
        .where(Job.tenant_id == tenant["X-Tenant-Id"], File.deleted_at.is_not(None))
    ).all()
    assert orphaned == [], "a job refers to a deleted file"
    for job_row in db.scalars(select(Job).where(Job.tenant_id == tenant["X-Tenant-Id"])):
        training = db.get(File, job_row.training_file_id)
        assert training is not None
        assert (settings.blob_dir / training.storage_key).is_file()


def test_concurrent_deletes_of_one_file_have_exactly_one_winner(
    client: TestClient, make_tenant: Callable[[], dict[str, str]], api_settings: Settings
) -> None:
    _delete_race(client, make_tenant(), api_settings)


def test_job_creation_and_file_deletion_never_both_win(
    client: TestClient, make_tenant: Callable[[], dict[str, str]], api_settings: Settings, db: Session
) -> None:
    _job_race(client, make_tenant(), api_settings, db)


def test_the_same_races_on_the_embedded_sqlite_default(tmp_path: Path) -> None:
    """SQLite ignores FOR UPDATE / FOR SHARE: the conditional UPDATE and the write lock decide there."""
    settings = Settings(home=tmp_path / "home", max_upload_bytes=TEST_MAX_UPLOAD_BYTES)
    migrate(settings)
    engine = make_engine(settings.database_url)
    with Session(engine, expire_on_commit=False) as db:
        tenant_row, key = create_tenant_with_key(db, "sqlite-races")
        db.commit()
        tenant = {"Authorization": f"Bearer {key}", "X-Tenant-Id": tenant_row.id}
        app = create_app(settings)
        app.dependency_overrides[get_enqueue] = lambda: lambda job_id: None
        with TestClient(app) as sqlite_client:
            _delete_race(sqlite_client, tenant, settings)
            _job_race(sqlite_client, tenant, settings, db)
    engine.dispose()


def test_in_use_names_every_unfinished_job_and_finished_jobs_keep_the_file_id(
    client: TestClient, make_tenant: Callable[[], dict[str, str]]
) -> None:
    tenant = make_tenant()
    file_id = _new_file(client, tenant)
    first = create_job(client, tenant, file_id).json()["id"]
    second = create_job(client, tenant, file_id, validation_file=file_id).json()["id"]
    error = assert_error(client.delete(f"/v1/files/{file_id}", headers=tenant), 409, code="file_in_use")
    assert first in error["message"] and second in error["message"]
    assert client.post(f"/v1/fine_tuning/jobs/{first}/cancel", headers=tenant).status_code == 200
    error = assert_error(client.delete(f"/v1/files/{file_id}", headers=tenant), 409, code="file_in_use")
    assert second in error["message"] and first not in error["message"]
    assert client.post(f"/v1/fine_tuning/jobs/{second}/cancel", headers=tenant).status_code == 200
    assert client.delete(f"/v1/files/{file_id}", headers=tenant).status_code == 200
    # a finished job keeps referring to the deleted file's id, as OpenAI's jobs do
    assert client.get(f"/v1/fine_tuning/jobs/{first}", headers=tenant).json()["training_file"] == file_id
    assert_error(create_job(client, tenant, file_id), 404, param="training_file")


def test_another_tenants_jobs_are_not_named(
    client: TestClient, make_tenant: Callable[[], dict[str, str]]
) -> None:
    owner, other = make_tenant(), make_tenant()
    file_id = _new_file(client, owner)
    assert_error(create_job(client, other, file_id), 404, param="training_file")
    assert_error(client.delete(f"/v1/files/{file_id}", headers=other), 404, param="file_id")
    assert client.delete(f"/v1/files/{file_id}", headers=owner).status_code == 200
