"""Fixtures of the schema fuzzing: the app on each database backend, with a tenant's key.

`fuzz_backend` is parametrized: the embedded default (SQLite, filesystem broker) and Postgres + Redis.
Each backend gets a fresh, migrated database and its own storage folder; the enqueue dependency records
job ids instead of sending them (a worker is not needed to check the API against its schema).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz_helpers import FuzzTarget

from api.deps import get_enqueue
from api.main import create_app
from lorasp_service.auth import create_tenant_with_key
from lorasp_service.db import migrate, session_scope, temporary_postgres_database
from lorasp_service.settings import Settings

# Small uploads keep generated multipart bodies cheap; the size guard itself is fuzzed all the same.
FUZZ_MAX_UPLOAD_BYTES = 64 * 1024


@pytest.fixture(scope="session")
def fuzz_postgres_url(postgres_admin_url: str) -> Iterator[str]:
    with temporary_postgres_database(postgres_admin_url, "lorasp_fuzz") as url:
        yield url


def _settings(request: pytest.FixtureRequest, home: Path) -> Settings:
    if request.param == "sqlite":
        # The embedded default: SQLite under home, the filesystem broker.
        return Settings(home=home, max_upload_bytes=FUZZ_MAX_UPLOAD_BYTES, enabled_models=None)
    return Settings(
        home=home,
        database_url=request.getfixturevalue("fuzz_postgres_url"),
        broker_url=request.getfixturevalue("redis_url"),
        max_upload_bytes=FUZZ_MAX_UPLOAD_BYTES,
        enabled_models=None,
    )


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def fuzz_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzTarget]:
    settings = _settings(request, tmp_path_factory.mktemp(f"fuzz_{request.param}"))
    migrate(settings)
    with session_scope(settings) as session:
        _, key = create_tenant_with_key(session, f"fuzz-{secrets.token_hex(4)}")
        session.commit()
    enqueued: list[str] = []
    app = create_app(settings)
    app.dependency_overrides[get_enqueue] = lambda: enqueued.append
    yield FuzzTarget(request.param, app, {"Authorization": f"Bearer {key}"}, enqueued)
    app.state.lorasp.close()
