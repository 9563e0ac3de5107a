"""App factory. `create_app(settings)` for tests and the CLI, module-level `app` for `uvicorn api.main:app`.

The schema is Alembic's: run `lorasp_service.db.migrate(settings)` before serving a fresh database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import AppResources
from api.errors import error_response, file_too_large, install_error_handlers
from api.inference_tier.backend import ServingBackend
from api.metrics import install_metrics
from api.rate_limits import RateLimitHeaders, RequestLimit
from api.routes import adapters, admin, files, health, inference, jobs, models, serving, webhooks
from api.ui import mount_ui
from lorasp_service.blob_sweep import sweep_orphans
from lorasp_service.settings import Settings, get_settings

log = logging.getLogger(__name__)

API_PREFIX = "/v1"

# Routers served under /v1. The serving engineer appends inference.router and serving.router here.
ROUTERS: list[APIRouter] = [
    files.router,
    jobs.router,
    models.router,
    adapters.router,
    inference.router,
    serving.router,
    webhooks.router,
    admin.router,
]
# Routers whose every route counts one request against the tenant's rate limit. The others charge
# per route: inference (requests and tokens, through its bodies), models (its hot listing charges
# after its own key lookup); admin routes are not limited.
REQUEST_LIMITED_ROUTERS = (files.router, jobs.router, adapters.router, serving.router, webhooks.router)

# Room for the multipart envelope (boundaries, part headers, the purpose field) around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# Multipart uploads guarded by Content-Length: datasets and adapter archives.
UPLOAD_PATHS = frozenset({f"{API_PREFIX}/files", f"{API_PREFIX}/adapters"})

OPENAPI_TAGS = [
    {"name": "files", "description": "Dataset uploads (JSONL chat / prompt-completion, classification)"},
    {"name": "fine-tuning", "description": "LoRA-SP fine-tuning jobs, their events and checkpoints"},
    {"name": "models", "description": "Base models and fine-tuned adapters"},
    {"name": "adapters", "description": "Adapter downloads and uploads (PEFT format), hot-loading"},
    {"name": "inference", "description": "Chat/text completions and classifications (base models, adapters)"},
    {"name": "webhooks", "description": "Signed job events (Standard Webhooks) and their delivery log"},
    {"name": "health", "description": "Database and broker reachability"},
]


class UploadSizeGuard:
    """Answers 413 from Content-Length alone, before a too-large upload is read (let alone spooled)."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app = app
        self.limit = max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in UPLOAD_PATHS:
            declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1").strip()
            if declared.isdigit() and int(declared) > self.limit:
                error = file_too_large(
                    f"Request body of {declared} bytes exceeds the upload limit of "
                    f"{self.max_upload_bytes} bytes."
                )
                response = error_response(413, error.detail, {"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def sweep_orphans_forever(resources: AppResources) -> None:
    """The orphan sweep at start, then every interval (a blocking pass, so in a thread: /health stays
    responsive). A failed pass is logged and retried at the next interval, never fatal to the API."""
    settings = resources.settings
    while True:
        try:
            await asyncio.to_thread(
                sweep_orphans, resources.sessions, resources.storage, settings.orphan_grace_seconds
            )
        except Exception:
            log.exception("orphan blob sweep failed")
        if settings.orphan_sweep_interval_seconds <= 0:
            return
        await asyncio.sleep(settings.orphan_sweep_interval_seconds)


def create_app(settings: Settings | None = None, *, serving_engine: ServingBackend | None = None) -> FastAPI:
    """`serving_engine`: inject one (tests); by default the app builds its own on first use and closes it."""
    settings = settings or get_settings()
    resources = AppResources(settings, serving_engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(sweep_orphans_forever(resources), name="orphan-sweep")
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        resources.close()

    app = FastAPI(
        title="lorasp",
        summary="Self-hosted, OpenAI-compatible fine-tuning with LoRA-SP adapters",
        version="0.1.0",
        openapi_tags=OPENAPI_TAGS,
        lifespan=lifespan,
    )
    app.state.lorasp = resources
    install_error_handlers(app)
    app.add_middleware(UploadSizeGuard, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(RateLimitHeaders)
    if settings.metrics_enabled:
        install_metrics(app, resources)  # outermost: it times and counts what the others answer
    app.include_router(health.router)
    for router in ROUTERS:
        limited = router in REQUEST_LIMITED_ROUTERS
        app.include_router(router, prefix=API_PREFIX, dependencies=[RequestLimit] if limited else None)
    mount_ui(app)  # the dashboard: static files only, calling /v1 from the browser
    return app


app = create_app()
