"""Alembic environment: the URL is the settings' database URL unless the caller set one."""

from __future__ import annotations

from alembic import context

from lorasp_service.db import make_engine
from lorasp_service.orm import Base
from lorasp_service.settings import get_settings
from lorasp_service.webhooks import models as _webhook_models  # noqa: F401 - their tables in Base.metadata

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        # Batch mode so ALTERs work on SQLite too.
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
