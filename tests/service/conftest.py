"""API test fixtures: a fresh PostgreSQL database per test session, migrated by Alembic, blob storage in a
temporary folder, Redis as the broker, two tenants with keys, and a TestClient whose enqueue dependency
records job ids instead of talking to Celery.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from api_helpers import TEST_MAX_UPLOAD_BYTES, EnqueueRecorder, chat_rows, classification_rows, jsonl, upload
from fastapi.testclient import TestClient
from model_dirs import llama_dir
from sqlalchemy.orm import Session
from webhook_fixtures import deliveries, hook_tenant, private_client, private_settings  # noqa: F401

from api.deps import get_enqueue
from api.main import create_app
from lorasp_core.config import LoraSPConfig
from lorasp_core.models.tiny import tiny_random_llama
from lorasp_core.peft_format import save_adapter
from lorasp_core.wrapping import apply_lorasp
from lorasp_service.auth import create_tenant_with_key
from lorasp_service.db import make_engine, migrate, temporary_postgres_database
from lorasp_service.orm import Adapter
from lorasp_service.registry import new_adapter_id
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage


@pytest.fixture(scope="session")
def api_database_url(postgres_admin_url: str) -> Iterator[str]:
    with temporary_postgres_database(postgres_admin_url, "lorasp_api") as url:
        yield url


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


@pytest.fixture(scope="session")
def real_adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A genuine LoRA-SP adapter of the tiny Llama, as the worker would save it."""
    model = apply_lorasp(tiny_random_llama(seed=0), LoraSPConfig(r=4, alpha=8.0, freeze_ratio=0.5))
    return save_adapter(
        model,
        tmp_path_factory.mktemp("adapter") / "adapter",
        base_model_name_or_path="tiny-random-llama",
        task_type="causal-lm",
    )


@pytest.fixture()
def make_adapter(db: Session, api_settings: Settings, real_adapter_dir: Path) -> Any:
    """Registers an adapter for a tenant the way the worker does (directory + archive + row)."""

    def make(tenant_id: str, *, with_archive: bool = True) -> Adapter:
        storage = BlobStorage(api_settings.blob_dir)
        adapter_id = new_adapter_id("tiny-random-llama", "test")
        dir_key = f"adapters/{tenant_id}/{adapter_id.replace(':', '_')}"
        storage.put_dir(dir_key, real_adapter_dir)
        archive_key, size, sha256 = None, 0, "0" * 64
        if with_archive:
            archive_key = dir_key + ".tar.gz"
            size, sha256 = storage.archive_dir(dir_key, archive_key)
        adapter = Adapter(
            id=adapter_id,
            tenant_id=tenant_id,
            base_model="tiny-random-llama",
            task="causal-lm",
            storage_key=dir_key,
            archive_key=archive_key,
            sha256=sha256,
            bytes=size,
            rank=4,
            freeze_ratio=0.5,
            target_modules=["q_proj", "v_proj"],
        )
        db.add(adapter)
        db.commit()
        return adapter

    return make


@pytest.fixture(scope="session")
def admin(db_engine: sa.Engine) -> dict[str, str]:
    """Headers of an admin key (the base-model registry's /v1/admin/models)."""
    with Session(db_engine) as session:
        _, key = create_tenant_with_key(session, f"ops-{secrets.token_hex(4)}", admin=True)
        session.commit()
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model_dirs")


@pytest.fixture()
def fresh_llama(model_root: Path) -> Callable[..., Path]:
    """Builds a new tiny Llama folder (keyword arguments: `model_dirs.llama_dir`'s)."""

    def make(**kwargs: Any) -> Path:
        return llama_dir(model_root / f"llama-{secrets.token_hex(4)}", **kwargs)

    return make
