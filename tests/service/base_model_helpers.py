"""Registering base models through /v1/admin/models in tests (the admin key and model folders are the
`admin`, `model_root` and `fresh_llama` fixtures of conftest)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

ADMIN = "/v1/admin/models"


def unique_name(prefix: str = "m") -> str:
    """A base-model name no other test uses (the database is shared by the session)."""
    return f"{prefix}-{secrets.token_hex(4)}"


def register(client: TestClient, admin: dict[str, str], source: Path | str, **body: Any) -> Any:
    payload = {"name": body.pop("name", unique_name()), "source": str(source), **body}
    return client.post(ADMIN, headers=admin, json=payload)
