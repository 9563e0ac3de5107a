"""The internal HTTP API of one `lorasp inference` process: a ServingEngine behind a shared secret.

The API process routes to it (see router.py). Requests name adapters by registry id: the process
resolves the id against the same database and storage as the API, so no path crosses the wire, and a
request for an adapter it does not have hot (it is another process's, which died) loads it on demand.
Generation streams NDJSON, one `{"chunk": ...}` per engine chunk; an error before the first chunk is a
typed error response, after it a last `{"error": ...}` line.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from api.inference_tier import wire
from api.services.serving import build_serving_engine
from lorasp_core.serving import (
    AdapterInfo,
    ClassificationResult,
    GenerationRequest,
    GenerationStream,
    ServingEngine,
    UnknownAdapterError,
)
from lorasp_service.db import session_scope
from lorasp_service.orm import Adapter
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

logger = logging.getLogger("lorasp.inference")
T = TypeVar("T")


class ClassifyBody(BaseModel):
    model: str
    adapter_id: str | None = None
    texts: list[str]


class CheckBody(BaseModel):
    adapter_id: str
    storage_key: str  # where the unpacked upload lies, relative to the shared storage root
    base_model: str


class LoadBody(BaseModel):
    pin: bool = False


class PinBody(BaseModel):
    pinned: bool = True


class InferenceProcess:
    """The engine of this process and how it finds adapters by registry id."""

    def __init__(self, settings: Settings, name: str, engine: ServingEngine | None = None) -> None:
        self.settings = settings
        self.name = name
        self.storage = BlobStorage(settings.blob_dir)
        self.engine = engine or build_serving_engine(settings)

    def load_registered(self, adapter_id: str, *, pin: bool = False) -> AdapterInfo:
        with session_scope(self.settings) as session:
            adapter = session.get(Adapter, adapter_id)
            if adapter is None:
                raise UnknownAdapterError(f"adapter {adapter_id!r} is not in the registry")
            path, base_model, owner = (
                self.storage.path(adapter.storage_key),
                adapter.base_model,
                adapter.tenant_id,
            )
        return self.engine.load_adapter(adapter_id, path, base_model, pin=pin, owner=owner)

    def with_adapter(self, adapter_id: str | None, call: Callable[[], T]) -> T:
        """Run `call`; an adapter this process does not have (yet, or any more) is loaded once first."""
        try:
            return call()
        except UnknownAdapterError:
            if adapter_id is None:
                raise
            self.load_registered(adapter_id)
            return call()


def _ndjson(stream: GenerationStream) -> Iterator[bytes]:
    try:
        for chunk in stream:
            yield (json.dumps({wire.CHUNK_KEY: wire.to_wire(chunk)}) + "\n").encode()
    except Exception as error:
        logger.exception("generation failed mid-stream")
        yield (json.dumps({wire.ERROR_KEY: wire.error_to_wire(error)}) + "\n").encode()
    finally:
        stream.cancel()  # the API went away (or the stream ended): free the row


async def _engine_error(_: Request, exc: Exception) -> JSONResponse:
    entry = wire.error_kind(exc)
    if entry.status >= 500:
        logger.error("request failed: %r", exc, exc_info=exc if entry.kind == "internal" else None)
    return JSONResponse({wire.ERROR_KEY: wire.error_to_wire(exc)}, status_code=entry.status)


def create_inference_app(settings: Settings, process: InferenceProcess) -> FastAPI:
    secret = settings.inference_secret
    if secret is None or not secret.get_secret_value():
        raise ValueError("LORASP_INFERENCE_SECRET must be set: the inference API is authenticated by it")
    expected = f"Bearer {secret.get_secret_value()}"

    async def authenticated(authorization: Annotated[str, Header()] = "") -> None:
        if not secrets.compare_digest(authorization.encode(), expected.encode()):
            raise PermissionError("wrong or missing inference secret")

    async def _forbidden(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({wire.ERROR_KEY: {"kind": "forbidden", "message": str(exc)}}, status_code=401)

    app = FastAPI(title="lorasp inference", dependencies=[Depends(authenticated)], openapi_url=None)
    app.add_exception_handler(PermissionError, _forbidden)
    for entry in wire.ERROR_KINDS:  # typed engine errors: answered, not logged as crashes
        app.add_exception_handler(entry.error_type, _engine_error)
    app.add_exception_handler(Exception, _engine_error)
    engine = process.engine

    @app.get("/health")
    async def health() -> dict[str, Any]:
        hot = [{"adapter_id": i.adapter_id, "base_model": i.base_model} for i in engine.loaded_adapters()]
        return {"status": "ok", "name": process.name, "hot": hot}

    @app.get("/figures")
    async def figures() -> dict[str, Any]:
        return {
            "pending_requests": engine.pending_requests(),
            "batch_sizes": engine.batch_sizes,
            "cache_counters": wire.to_wire(engine.cache_counters()),
            "resident_adapters": engine.resident_adapter_count(),
            "batching": wire.to_wire(engine.batching_figures()),
        }

    @app.post("/generate")
    def generate(body: dict[str, Any]) -> StreamingResponse:
        request = wire.from_wire(GenerationRequest, body)
        stream = process.with_adapter(request.adapter_id, lambda: engine.generate(request))
        headers = {wire.PROCESS_HEADER: process.name}
        return StreamingResponse(_ndjson(stream), media_type=wire.NDJSON_MEDIA_TYPE, headers=headers)

    @app.post("/classify")
    def classify(body: ClassifyBody) -> list[dict[str, Any]]:
        results: list[ClassificationResult] = process.with_adapter(
            body.adapter_id, lambda: engine.classify(body.model, body.adapter_id, body.texts)
        )
        return [wire.to_wire(result) for result in results]

    @app.post("/adapters/check")
    def check_adapter(body: CheckBody) -> dict[str, Any]:
        path = process.storage.path(body.storage_key)
        _, labels = engine.check_adapter(body.adapter_id, path, body.base_model)
        return {"label_names": None if labels is None else list(labels)}

    @app.get("/adapters")
    def loaded_adapters() -> list[dict[str, Any]]:
        return [wire.to_wire(info) for info in engine.loaded_adapters()]

    @app.get("/adapters/{adapter_id:path}/info")
    def adapter_info(adapter_id: str) -> dict[str, Any]:
        return dict(wire.to_wire(engine.adapter_info(adapter_id)))

    @app.post("/adapters/{adapter_id:path}/load")
    def load_adapter(adapter_id: str, body: LoadBody) -> dict[str, Any]:
        return dict(wire.to_wire(process.load_registered(adapter_id, pin=body.pin)))

    @app.post("/adapters/{adapter_id:path}/pin")
    def pin_adapter(adapter_id: str, body: PinBody) -> dict[str, Any]:
        engine.pin_adapter(adapter_id, body.pinned)
        return {"pinned": body.pinned}

    @app.post("/adapters/{adapter_id:path}/unload")
    def unload_adapter(adapter_id: str) -> dict[str, Any]:
        engine.unload_adapter(adapter_id)
        return {"unloaded": True}

    return app
