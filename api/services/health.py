"""Liveness of the two things the API needs: the database and the job broker."""

from __future__ import annotations

import os

from pydantic import BaseModel
from sqlalchemy import Engine, text

from lorasp_service.settings import Settings

BROKER_TIMEOUT_SECONDS = 3.0


class HealthReport(BaseModel):
    status: str  # "ok" | "unavailable"
    database: str  # "ok" or why not
    broker: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def check_database(engine: Engine) -> str:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:  # noqa: BLE001 - any failure means "not reachable"
        return f"unreachable: {type(error).__name__}"
    return "ok"


def check_broker(settings: Settings) -> str:
    url = settings.broker_url
    if url.startswith("filesystem://"):
        folder = settings.broker_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            return f"unreachable: cannot create {folder}: {error.strerror}"
        return "ok" if os.access(folder, os.W_OK) else f"unreachable: {folder} is not writable"
    if url.startswith(("redis://", "rediss://")):
        import redis

        try:
            client = redis.Redis.from_url(
                url, socket_connect_timeout=BROKER_TIMEOUT_SECONDS, socket_timeout=BROKER_TIMEOUT_SECONDS
            )
            try:
                client.ping()
            finally:
                client.close()
        except Exception as error:  # noqa: BLE001
            return f"unreachable: {type(error).__name__}"
        return "ok"
    return f"unsupported broker URL scheme: {url.split('://', 1)[0]}"


def check_health(engine: Engine, settings: Settings) -> HealthReport:
    database, broker = check_database(engine), check_broker(settings)
    status = "ok" if database == "ok" and broker == "ok" else "unavailable"
    return HealthReport(status=status, database=database, broker=broker)
