"""API test fixtures: a fresh PostgreSQL database per test session, migrated by Alembic, blob storage in a
temporary folder, Redis as the broker, two tenants with keys, and a TestClient whose enqueue dependency
records job ids instead of talking to Celery.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from api_helpers import TEST_MAX_UPLOAD_BYTES, chat_rows, classification_rows, jsonl, upload
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from api.deps import get_enqueue
from api.main import create_app
from lorasp_service.auth import create_tenant_with_key
from lorasp_service.db import make_engine, migrate
from lorasp_service.settings import Settings


@pytest.fixture(scope="session")
def api_database_url(postgres_admin_url: str) -> Iterator[str]:
    url = make_url(postgres_admin_url)
    name = f"lorasp_api_{secrets.token_hex(6)}"
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def api_settings(api_database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("lorasp_api_home")
    settings = Settings(
        home=home,
        database_url=api_database_url,
        storage_dir=home / "storage",
        broker_url=redis_url,
        max_upload_bytes=TEST_MAX_UPLOAD_BYTES,
        enabled_models=None,
    )
    migrate(settings)
    return settings


@pytest.fixture(scope="session")
def db_engine(api_settings: Settings) -> Iterator[sa.Engine]:
    engine = make_engine(api_settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture()
def db(db_engine: sa.Engine) -> Iterator[Session]:
    """A session for arranging rows the worker would write (events, checkpoints, adapters)."""
    with Session(db_engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture(scope="session")
def make_tenant(db_engine: sa.Engine) -> Callable[[], dict[str, str]]:
    """Creates a fresh tenant; returns its auth headers (plus its id under 'X-Tenant-Id')."""

    def make() -> dict[str, str]:
        with Session(db_engine) as session:
            tenant, key = create_tenant_with_key(session, f"tenant-{secrets.token_hex(4)}")
            session.commit()
            return {"Authorization": f"Bearer {key}", "X-Tenant-Id": tenant.id}

    return make


@pytest.fixture(scope="session")
def alice(make_tenant: Callable[[], dict[str, str]]) -> dict[str, str]:
    return make_tenant()


@pytest.fixture(scope="session")
def bob(make_tenant: Callable[[], dict[str, str]]) -> dict[str, str]:
    return make_tenant()


class EnqueueRecorder:
    def __init__(self) -> None:
        self.job_ids: list[str] = []
        self.fail = False

    def __call__(self, job_id: str) -> None:
        if self.fail:
            raise ConnectionError("broker down (test)")
        self.job_ids.append(job_id)


@pytest.fixture(scope="session")
def enqueue_recorder() -> EnqueueRecorder:
    return EnqueueRecorder()


@pytest.fixture(scope="session")
def session_client(api_settings: Settings, enqueue_recorder: EnqueueRecorder) -> Iterator[TestClient]:
    app = create_app(api_settings)
    app.dependency_overrides[get_enqueue] = lambda: enqueue_recorder
    with TestClient(app) as client:
        yield client


@pytest.fixture()
def client(session_client: TestClient, enqueue_recorder: EnqueueRecorder) -> TestClient:
    enqueue_recorder.job_ids.clear()
    enqueue_recorder.fail = False
    return session_client


@pytest.fixture()
def chat_file(client: TestClient, alice: dict[str, str]) -> dict[str, Any]:
    response = upload(client, alice, jsonl(chat_rows()))
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture()
def classification_file(client: TestClient, alice: dict[str, str]) -> dict[str, Any]:
    response = upload(client, alice, jsonl(classification_rows()), filename="labels.jsonl")
    assert response.status_code == 200, response.text
    return dict(response.json())
