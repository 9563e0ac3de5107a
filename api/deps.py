"""Request dependencies: settings, DB session, blob storage, the authenticated tenant, job enqueueing.

Everything hangs off `app.state.lorasp` (an `AppResources`), built lazily so that creating the app
touches neither the database nor the disk.

FastAPI runs every sync (`def`) dependency in the threadpool: a round trip between threads per
dependency and per request. Those that only read an attribute are `async def` (they run on the event
loop); only what does I/O (the key lookup, closing a session that holds a connection) goes to a thread.
A hot read path (`GET /v1/models`) goes further: one thread hop for its key lookup and its query
together, on a Core connection (`AppResources.read_connection`), answering `unknown_key` as
`get_current_tenant` does.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import cached_property, partial
from typing import Annotated, Protocol

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.errors import APIError, invalid_api_key
from api.inference_tier.backend import ServingBackend
from api.services.serving import build_serving_backend
from lorasp_service.auth import SHOWN_KEY_CHARS, is_admin_key, tenant_for_key
from lorasp_service.db import SETTINGS_INFO_KEY, make_engine
from lorasp_service.orm import Tenant
from lorasp_service.rate_limits import RateLimiter
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage


class EnqueueJob(Protocol):
    """Sends a committed job id to the workers of a resource class (None: "default"); tests replace it
    to record ids without a broker."""

    def __call__(self, job_id: str, resource_class: str | None = None, /) -> None: ...


class AppResources:
    def __init__(self, settings: Settings, serving_engine: ServingBackend | None = None) -> None:
        self.settings = settings
        # One serving backend per app, built on first use (unless injected), closed at shutdown if ours:
        # the in-process ServingEngine, or an InferenceRouter when inference processes are configured.
        self._serving: ServingBackend | None = serving_engine
        self._owns_serving = serving_engine is None
        self._serving_lock = threading.Lock()

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        # The settings ride along for after-commit hooks (webhook deliveries are sent with them).
        info = {SETTINGS_INFO_KEY: self.settings}
        return sessionmaker(bind=self.engine, expire_on_commit=False, info=info)

    @cached_property
    def _autocommit_engine(self) -> Engine:
        # Shares the pool. Autocommit: no BEGIN and ROLLBACK round trips around a read-only request;
        # its statements see what a READ COMMITTED transaction would (each its own snapshot).
        return self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @contextmanager
    def read_connection(self) -> Iterator[Connection]:
        """A pooled Core connection for reads only (blocking: call it from a thread)."""
        with self._autocommit_engine.connect() as connection:
            yield connection

    @cached_property
    def storage(self) -> BlobStorage:
        return BlobStorage(self.settings.blob_dir)

    @cached_property
    def rate_limiter(self) -> RateLimiter:
        # Built on the first request (the app's event loop), so its Redis connections belong to it.
        return RateLimiter(self.settings)

    @property
    def serving(self) -> ServingBackend:
        with self._serving_lock:
            if self._serving is None:
                self._serving = build_serving_backend(self.settings)
            return self._serving

    @property
    def started_serving(self) -> ServingBackend | None:
        """The engine if it exists already (hooks such as model deletion must not start one). A router
        holds no model, so it always counts as started: a deleted adapter is unloaded from the processes
        even by an API process that never served."""
        if self.settings.inference_urls:
            return self.serving
        return self._serving

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
        with self._serving_lock:
            if self._serving is not None and self._owns_serving:
                self._serving.close()
                self._serving = None


async def get_resources(request: Request) -> AppResources:
    resources: AppResources = request.app.state.lorasp
    return resources


ResourcesDep = Annotated[AppResources, Depends(get_resources)]


async def get_request_settings(resources: ResourcesDep) -> Settings:
    return resources.settings


SettingsDep = Annotated[Settings, Depends(get_request_settings)]


async def get_session(resources: ResourcesDep) -> AsyncIterator[Session]:
    """A session whose transaction the service commits explicitly; rolled back and closed at the end.

    Made on the event loop: a Session does no I/O before its first query. Closing one that holds a
    connection (its rollback on return to the pool) is blocking, so it goes to a thread, shielded so
    that a client's disconnect cannot leave the connection checked out."""
    session = resources.sessions()
    try:
        yield session
    finally:
        if session.in_transaction():
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]


async def get_storage(resources: ResourcesDep) -> BlobStorage:
    return resources.storage


StorageDep = Annotated[BlobStorage, Depends(get_storage)]

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer sk-lorasp-...`")


# The bearer credentials as presented (None without an Authorization header); async, on the event loop.
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def presented_key(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None:
        raise invalid_api_key(
            "You didn't provide an API key. Send it in the Authorization header: 'Authorization: Bearer KEY'."
        )
    return credentials.credentials


def unknown_key(key: str) -> APIError:
    shown = key[:10] + "****" if len(key) > SHOWN_KEY_CHARS else "****"
    return invalid_api_key(f"Incorrect API key provided: {shown}. The key is unknown or revoked.")


def get_current_tenant(session: SessionDep, credentials: BearerDep) -> Tenant:
    key = presented_key(credentials)
    tenant = tenant_for_key(session, key)
    if tenant is None:
        raise unknown_key(key)
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]


def require_admin_key(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Admin routes: a valid admin key (`lorasp admin create-key --admin`); a tenant key is a 403."""
    tenant = get_current_tenant(session, credentials)  # 401 for a missing, unknown or revoked key
    assert credentials is not None
    if not is_admin_key(session, credentials.credentials):
        raise APIError(
            403,
            f"Tenant '{tenant.id}' uses a tenant API key; this route needs an admin key.",
            code="permission_denied",
        )


AdminKey = Depends(require_admin_key)


def get_enqueue(settings: SettingsDep) -> EnqueueJob:
    # Imported here: the queue module (Celery) is only needed when a job is really sent.
    from lorasp_service.queue import enqueue_job

    return partial(enqueue_job, settings)


EnqueueDep = Annotated[EnqueueJob, Depends(get_enqueue)]


def get_serving_engine(resources: ResourcesDep) -> ServingBackend:
    return resources.serving


async def get_started_serving_engine(resources: ResourcesDep) -> ServingBackend | None:
    return resources.started_serving


# The app's serving backend (created on first use); StartedEngineDep is None until something used it.
EngineDep = Annotated[ServingBackend, Depends(get_serving_engine)]
StartedEngineDep = Annotated[ServingBackend | None, Depends(get_started_serving_engine)]
