"""The comparison app of `benchmarks.api_load`: a bare FastAPI `GET /v1/models` doing the same key lookup.

It hashes the bearer key and runs one indexed lookup of the tenant by `api_keys.key_hash` (the unique
index `tenant_for_key` uses) on a pooled Postgres connection, then answers the base-model list. No
dependency injection, no ORM session, no response model: what any endpoint needs at the least, so
that lorasp's `GET /v1/models` can be measured against it on the same uvicorn.

Run by the benchmark as `uvicorn benchmarks.api_load_bare:create_bare_app --factory` with
`LORASP_DATABASE_URL` set.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import create_engine, text

from lorasp_core.models import CATALOG

# Enough connections for every concurrent client: a bare endpoint that waits on its pool measures nothing.
POOL_SIZE = 32
TENANT_FOR_HASH = text(
    "SELECT api_keys.tenant_id FROM api_keys WHERE api_keys.key_hash = :key_hash "
    "AND api_keys.revoked_at IS NULL"
)


def _base_models() -> list[dict[str, Any]]:
    return [
        {
            "id": name,
            "object": "model",
            "created": 1735689600,
            "owned_by": "lorasp",
            "lorasp": {"kind": "base", "task": entry.task, "description": entry.description},
        }
        for name, entry in CATALOG.items()
    ]


def create_bare_app() -> FastAPI:
    engine = create_engine(os.environ["LORASP_DATABASE_URL"], pool_size=POOL_SIZE, max_overflow=0)
    models = _base_models()
    app = FastAPI()

    # A sync endpoint, like lorasp's: the blocking lookup runs in Starlette's threadpool.
    @app.get("/v1/models")
    def list_models(request: Request) -> JSONResponse:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            return JSONResponse({"error": {"message": "no key"}}, status_code=401)
        key_hash = hashlib.sha256(key.encode("utf-8")).hexdigest()
        with engine.connect() as connection:
            tenant_id = connection.execute(TENANT_FOR_HASH, {"key_hash": key_hash}).scalar_one_or_none()
        if tenant_id is None:
            return JSONResponse({"error": {"message": "unknown key"}}, status_code=401)
        return JSONResponse({"object": "list", "data": models})

    return app
