"""Shared test configuration.

Tests that need PostgreSQL or Redis use the real servers. When they are unreachable the tests skip,
except when LORASP_REQUIRE_SERVICES=1 (set by .ci/run), where they fail.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

POSTGRES_URL = os.environ.get(
    "LORASP_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/lorasp_test"
)
REDIS_URL = os.environ.get("LORASP_TEST_BROKER_URL", "redis://127.0.0.1:6379/15")
REQUIRE_SERVICES = os.environ.get("LORASP_REQUIRE_SERVICES") == "1"


def service_unavailable(what: str, error: Exception) -> None:
    """Fail (CI) or skip (a laptop without the servers) a test that needs `what`."""
    message = f"{what} is not reachable: {error}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (LORASP_REQUIRE_SERVICES=1: failing instead of skipping)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """URL of a reachable PostgreSQL server; the database itself is created if missing."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL)
    try:
        admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname=:n"), {"n": url.database})
            if exists.scalar() is None:
                conn.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
        admin.dispose()
    except Exception as error:  # noqa: BLE001 - any connection failure means "not reachable"
        service_unavailable("PostgreSQL", error)
    return POSTGRES_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as error:  # noqa: BLE001
        service_unavailable("Redis", error)
    return REDIS_URL
