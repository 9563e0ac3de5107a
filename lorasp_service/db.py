"""Engine and session factory. Alembic owns the schema; `migrate()` brings a database up to date."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from lorasp_service.settings import Settings, get_settings

# Key of `Session.info` holding the settings the session was made from (read by after-commit hooks).
SETTINGS_INFO_KEY = "lorasp.settings"

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# Postgres connections kept open per process. SQLAlchemy's default (5 + 10 overflow) closes every
# overflow connection on return, so 20 concurrent API requests opened a new connection (a new server
# backend) for most requests. Kept connections cover the API's usual concurrency (Starlette runs
# at most 40 sync calls at once); the overflow absorbs bursts of sessions held across awaits.
POOL_SIZE = 20
POOL_MAX_OVERFLOW = 20


def make_engine(database_url: str) -> Engine:
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(database_url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets the API read while the worker writes; FKs are off by default in SQLite.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # pre_ping: a connection the server closed (restart, idle timeout) is replaced, not handed out.
    return create_engine(
        database_url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_MAX_OVERFLOW
    )


@lru_cache(maxsize=4)
def _engine_for(database_url: str) -> Engine:
    return make_engine(database_url)


def get_engine(settings: Settings | None = None) -> Engine:
    return _engine_for((settings or get_settings()).database_url)


def session_factory(settings: Settings | None = None) -> sessionmaker[Session]:
    settings = settings or get_settings()
    # The settings ride along for after-commit hooks (webhook deliveries are sent with them).
    return sessionmaker(bind=get_engine(settings), expire_on_commit=False, info={SETTINGS_INFO_KEY: settings})


def managed_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction the caller commits explicitly; rolled back on error, always closed."""
    session = factory()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    yield from managed_session(session_factory(settings))


def migrate(settings: Settings | None = None) -> None:
    """Run Alembic migrations to head (the only way the schema is made), then seed the catalog rows."""
    from alembic import command
    from alembic.config import Config

    settings = settings or get_settings()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    command.upgrade(config, "head")
    from lorasp_service.base_models import seed_catalog  # imports torch: only once migrating

    with session_scope(settings) as session:
        seed_catalog(session)  # the catalog's models are rows too
        session.commit()


@contextmanager
def temporary_postgres_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database `<prefix>_<random>` on the PostgreSQL server of `server_url`; dropped on exit.

    Yields its URL. For test sessions and benchmarks that must not share state with anything else.
    """
    url = make_url(server_url)
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
