"""A model that an unfinished job continues from cannot be deleted (409 `model_in_use`), and a job
creation racing the model's DELETE never lets both win (row locks decide: PostgreSQL and SQLite)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from adapter_helpers import llama_parent_dir, register_adapter
from api_helpers import TEST_MAX_UPLOAD_BYTES, assert_error, chat_rows, jsonl, run_together, upload
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import get_enqueue
from api.main import create_app
from lorasp_service.auth import create_tenant_with_key
from lorasp_service.db import make_engine, migrate
from lorasp_service.jobs import ACTIVE_STATUSES
from lorasp_service.orm import Adapter, Job
from lorasp_service.settings import Settings

JOBS = "/v1/fine_tuning/jobs"
ROUNDS = 10


@pytest.fixture(scope="module")
def parent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return llama_parent_dir(tmp_path_factory.mktemp("parent"))


def _file(client: TestClient, tenant: dict[str, str]) -> str:
    response = upload(client, tenant, jsonl(chat_rows()))
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _continue(client: TestClient, tenant: dict[str, str], model: str, training: str) -> Any:
    return client.post(JOBS, headers=tenant, json={"model": model, "training_file": training})


def _delete(client: TestClient, tenant: dict[str, str], model: str) -> Any:
    return client.delete(f"/v1/models/{model}", headers=tenant)


def test_a_model_in_use_is_kept_until_its_child_jobs_finish(
    client: TestClient,
    db: Session,
    api_settings: Settings,
    make_tenant: Callable[[], dict[str, str]],
    parent_dir: Path,
) -> None:
    tenant = make_tenant()
    parent = register_adapter(db, api_settings, tenant["X-Tenant-Id"], parent_dir)
    training = _file(client, tenant)
    first, second = (_continue(client, tenant, parent.id, training).json()["id"] for _ in range(2))
    error = assert_error(_delete(client, tenant, parent.id), 409, param="model", code="model_in_use")
    assert first in error["message"] and second in error["message"]
    assert client.post(f"{JOBS}/{first}/cancel", headers=tenant).status_code == 200
    assert client.post(f"{JOBS}/{second}/pause", headers=tenant).json()["status"] == "paused"
    error = assert_error(_delete(client, tenant, parent.id), 409, param="model", code="model_in_use")
    assert second in error["message"] and first not in error["message"]  # a paused job still needs it
    assert client.get(f"/v1/models/{parent.id}", headers=tenant).status_code == 200
    assert client.post(f"{JOBS}/{second}/cancel", headers=tenant).status_code == 200
    assert _delete(client, tenant, parent.id).json() == {"id": parent.id, "object": "model", "deleted": True}


def test_a_checkpoint_in_use_keeps_its_jobs_model_too(
    client: TestClient,
    db: Session,
    api_settings: Settings,
    make_tenant: Callable[[], dict[str, str]],
    parent_dir: Path,
) -> None:
    tenant = make_tenant()
    training = _file(client, tenant)
    parent_job = client.post(
        JOBS, headers=tenant, json={"model": "tiny-random-llama", "training_file": training}
    )
    job_id = parent_job.json()["id"]
    assert client.post(f"{JOBS}/{job_id}/cancel", headers=tenant).status_code == 200
    final = register_adapter(db, api_settings, tenant["X-Tenant-Id"], parent_dir, job_id=job_id)
    checkpoint = register_adapter(
        db,
        api_settings,
        tenant["X-Tenant-Id"],
        parent_dir,
        adapter_id=f"{final.id}:ckpt-step-2",
        checkpoint_job_id=job_id,
    )
    child = _continue(client, tenant, checkpoint.id, training)
    assert child.status_code == 200, child.text
    assert child.json()["model"] == checkpoint.id
    for doomed in (final.id, checkpoint.id):  # deleting the job's model would take the checkpoint along
        error = assert_error(_delete(client, tenant, doomed), 409, param="model", code="model_in_use")
        assert child.json()["id"] in error["message"]
    assert client.post(f"{JOBS}/{child.json()['id']}/cancel", headers=tenant).status_code == 200
    assert _delete(client, tenant, final.id).status_code == 200
    assert client.get(f"/v1/models/{checkpoint.id}", headers=tenant).status_code == 404


def _race(
    client: TestClient, tenant: dict[str, str], settings: Settings, db: Session, parent_dir: Path
) -> None:
    training = _file(client, tenant)
    outcomes = {"job": 0, "delete": 0}
    for _ in range(ROUNDS):
        parent = register_adapter(db, settings, tenant["X-Tenant-Id"], parent_dir)
        job, deleted = run_together(
            [
                partial(_continue, client, tenant, parent.id, training),
                partial(_delete, client, tenant, parent.id),
            ]
        )
        if job.status_code == 200:
            error = assert_error(deleted, 409, param="model", code="model_in_use")
            assert job.json()["id"] in error["message"]
            assert client.post(f"{JOBS}/{job.json()['id']}/cancel", headers=tenant).status_code == 200
            outcomes["job"] += 1
        else:
            assert deleted.status_code == 200, (job.text, deleted.text)
            assert_error(job, 400, param="model", code="model_not_available")
            outcomes["delete"] += 1
    assert sum(outcomes.values()) == ROUNDS
    db.expire_all()
    orphaned = db.scalars(
        select(Job.id)
        .outerjoin(Adapter, Adapter.id == Job.parent_model)
        .where(Job.tenant_id == tenant["X-Tenant-Id"], Job.parent_model.is_not(None), Adapter.id.is_(None))
    ).all()
    assert orphaned == [], "a job continues from a deleted model"
    active = db.scalars(
        select(Job).where(Job.tenant_id == tenant["X-Tenant-Id"], Job.status.in_(ACTIVE_STATUSES))
    )
    assert list(active) == []


def test_job_creation_and_model_deletion_never_both_win(
    client: TestClient,
    db: Session,
    api_settings: Settings,
    make_tenant: Callable[[], dict[str, str]],
    parent_dir: Path,
) -> None:
    _race(client, make_tenant(), api_settings, db, parent_dir)


def test_the_same_race_on_the_embedded_sqlite_default(tmp_path: Path, parent_dir: Path) -> None:
    settings = Settings(home=tmp_path / "home", max_upload_bytes=TEST_MAX_UPLOAD_BYTES)
    migrate(settings)
    engine = make_engine(settings.database_url)
    with Session(engine, expire_on_commit=False) as db:
        tenant_row, key = create_tenant_with_key(db, "sqlite-model-race")
        db.commit()
        tenant = {"Authorization": f"Bearer {key}", "X-Tenant-Id": tenant_row.id}
        app = create_app(settings)
        app.dependency_overrides[get_enqueue] = lambda: lambda job_id: None
        with TestClient(app) as sqlite_client:
            _race(sqlite_client, tenant, settings, db, parent_dir)
    engine.dispose()
