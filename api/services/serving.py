"""Adapter serving: the app's ServingEngine, hot-load / unload / list, and engine errors as API errors.

Clients name registry ids, never paths (as with vLLM's adapter manager): every call first resolves the
tenant's Adapter row (another tenant's id is a 404, like an unknown one) and only then hands the
adapter's storage directory to the engine. Adapter ids are globally unique, so the engine's cache
needs no tenant key; listings are filtered back to the tenant through the registry.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import APIError, not_found
from api.inference_tier.backend import ServingBackend
from api.inference_tier.wire import InferenceStreamBrokenError, InferenceUnavailableError
from lorasp_core.models import LoadedModel, ModelUnavailableError
from lorasp_core.quantization import BASE_QUANTIZATIONS, quantizing_base_loader, resident_name
from lorasp_core.serving import (
    AdapterCacheFullError,
    AdapterInfo,
    AdapterLoadError,
    AdapterQuotaError,
    ChatTemplateError,
    ServingEngine,
    ServingOverloadedError,
    TemplateBudget,
    UnknownAdapterError,
)
from lorasp_service import model_loading, registry
from lorasp_service.db import session_scope
from lorasp_service.orm import Adapter, BaseModelRecord, Tenant
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

logger = logging.getLogger("api.serving")

T = TypeVar("T")
_LOOKED_IN = re.compile(r"\s*\(looked in [^)]*\)")


def build_serving_backend(settings: Settings) -> ServingBackend:
    """The in-process engine (the embedded default), or a router over LORASP_INFERENCE_URLS."""
    if settings.inference_urls:
        from api.inference_tier.router import InferenceRouter

        return InferenceRouter(settings)
    return build_serving_engine(settings)


def build_serving_engine(settings: Settings) -> ServingEngine:
    """One resident copy per base model (loaded on first use), adapters attached on top, never merged."""

    storage = BlobStorage(settings.blob_dir)

    def base_loader(name: str) -> LoadedModel:
        # The registry row says where its files are (the model store for a registered model).
        with session_scope(settings) as session:
            row = session.get(BaseModelRecord, name)
        if row is None:
            raise ModelUnavailableError(f"base model {name!r} is not registered")
        return model_loading.load_model(settings, storage, row)

    return ServingEngine(
        # a quantized resident per (base model, quantization) its adapters trained on: resident_base()
        quantizing_base_loader(base_loader),
        max_adapters=settings.serving_max_adapters,
        max_adapter_bytes=settings.serving_max_adapter_bytes,
        max_rank=settings.serving_max_rank,
        batch_window_ms=settings.serving_batch_window_ms,
        max_batch_size=settings.serving_max_batch_size,
        max_pinned_per_owner=settings.serving_max_pinned_per_tenant,
        max_resident_per_owner=settings.serving_max_resident_per_tenant,
        template_budget=TemplateBudget(
            timeout_ms=settings.chat_template_timeout_ms, max_chars=settings.chat_template_max_chars
        ),
        batching=settings.serving_batching,
        max_kv_cache_bytes=settings.serving_max_kv_cache_bytes,
        max_waiting_requests=settings.serving_max_waiting_requests,
    )


def resident_base(adapter: Adapter) -> str:
    """The engine's name for the base the adapter is served on: its base model, held quantized as the
    adapter was trained (`Adapter.base_quantization`)."""
    quantization = adapter.base_quantization
    if quantization not in BASE_QUANTIZATIONS:  # written by this code only; never trust a row blindly
        raise APIError(
            500, f"adapter {adapter.id!r} records an unknown base_quantization", type="server_error"
        )
    return resident_name(adapter.base_model, quantization)


def load_error_message(error: AdapterLoadError) -> str:
    """The engine's "which file, what problem", without server paths."""
    problem = _LOOKED_IN.sub("", error.problem)
    return f"Adapter '{error.adapter_id}' cannot be served: {Path(error.file).name}: {problem}."


@contextmanager
def engine_errors(param: str | None) -> Iterator[None]:
    """Engine failures as client-facing errors; a corrupt or mismatched adapter never becomes a 500."""
    try:
        yield
    except Exception as error:
        mapped = api_error(error, param)
        if mapped is None:
            raise
        raise mapped from error


def api_error(error: Exception, param: str | None) -> APIError | None:
    """The client-facing error of an engine / inference-tier failure; None: not one of theirs. The one
    mapping both a non-streamed answer (engine_errors) and an SSE stream's error event use."""
    if isinstance(error, AdapterLoadError):
        if error.problem == "adapter directory does not exist":
            return APIError(
                404,
                f"The files of adapter '{error.adapter_id}' are missing from storage.",
                param=param,
                code="adapter_files_missing",
            )
        return APIError(400, load_error_message(error), param=param, code="invalid_adapter")
    if isinstance(error, AdapterQuotaError):
        # The quota is always the requesting tenant's own (adapters are loaded for their owner only).
        return APIError(
            429,
            f"Your tenant's quota of {error.limit} {error.kind} adapters is full"
            + (" (each is pinned or serving)" if error.kind == "resident" else "")
            + f"; unpin or unload one of your adapters (LORASP_SERVING_MAX_{error.kind.upper()}_PER_TENANT).",
            param=param,
            code="adapter_quota_exceeded",
        )
    if isinstance(error, AdapterCacheFullError):
        return APIError(
            503,
            f"No adapter slot is free: every resident adapter is pinned or serving ({error}). "
            "Unload or unpin an adapter, or retry later.",
            param=param,
            code="adapter_cache_full",
            type="server_error",
        )
    if isinstance(error, ModelUnavailableError):
        return APIError(503, str(error), param=param, code="model_unavailable", type="server_error")
    if isinstance(error, InferenceUnavailableError):
        logger.error("%s", error)
        unavailable = APIError(
            503,
            "No inference process is reachable right now; retry later.",
            code="inference_unavailable",
            type="server_error",
        )
        unavailable.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
        return unavailable
    if isinstance(error, InferenceStreamBrokenError):
        # The process died (or its connection was cut) after it began answering: a bad gateway, not
        # our crash. The router has marked it down, so a retry goes to another process.
        logger.error("%s", error)
        return APIError(
            502,
            "The inference process serving this request was lost mid-answer; retry the request.",
            code="inference_process_lost",
            type="server_error",
        )
    if isinstance(error, ServingOverloadedError):
        overloaded = APIError(
            503,
            f"The server is overloaded: {error}. Please retry after {math.ceil(error.retry_after_s)} seconds "
            "(LORASP_SERVING_MAX_WAITING_REQUESTS).",
            code="server_overloaded",
            type="server_error",
        )
        overloaded.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
        return overloaded
    if isinstance(error, ChatTemplateError):
        return APIError(
            400,
            f"The model's chat template cannot be used: {error.problem}.",
            param=param,
            code="invalid_chat_template",
        )
    return None


def tenant_adapter(session: Session, tenant: Tenant, adapter_id: str, *, param: str) -> Adapter:
    adapter = registry.get_adapter_for_tenant(session, tenant.id, adapter_id)
    if adapter is None:
        raise not_found("model", adapter_id, param=param, code="model_not_found")
    return adapter


def ensure_loaded(
    engine: ServingBackend, storage: BlobStorage, adapter: Adapter, *, pin: bool = False, param: str = "model"
) -> AdapterInfo:
    """Hot-load the adapter from its storage directory (a cache hit, just touched, if resident)."""
    with engine_errors(param):
        path = storage.path(adapter.storage_key)
        base = resident_base(adapter)
        return engine.load_adapter(adapter.id, path, base, pin=pin, owner=adapter.tenant_id)


def with_reload(
    engine: ServingBackend, storage: BlobStorage, adapter: Adapter | None, call: Callable[[], T]
) -> T:
    """Run `call`; if a concurrent unload made the adapter unknown in between, load it again once."""
    try:
        return call()
    except UnknownAdapterError:
        if adapter is None:
            raise
        ensure_loaded(engine, storage, adapter)
        return call()


def load_adapter(
    session: Session,
    storage: BlobStorage,
    engine: ServingBackend,
    tenant: Tenant,
    adapter_id: str,
    pin: bool | None,
) -> AdapterInfo:
    adapter = tenant_adapter(session, tenant, adapter_id, param="adapter_id")
    info = ensure_loaded(engine, storage, adapter, pin=bool(pin), param="adapter_id")
    if pin is False and info.pinned:
        engine.pin_adapter(adapter.id, False)
        info = engine.adapter_info(adapter.id)
    return info


def unload_adapter(session: Session, engine: ServingBackend, tenant: Tenant, adapter_id: str) -> bool:
    """Free the adapter's slot (after its in-flight requests); False if it was not resident."""
    adapter = tenant_adapter(session, tenant, adapter_id, param="adapter_id")
    resident = any(info.adapter_id == adapter.id for info in engine.loaded_adapters())
    try:
        engine.unload_adapter(adapter.id)
    except UnknownAdapterError:
        return False
    logger.info("adapter %r unloaded by tenant %s (was resident: %s)", adapter.id, tenant.id, resident)
    return resident


def loaded_adapters(session: Session, engine: ServingBackend, tenant: Tenant) -> list[AdapterInfo]:
    """The tenant's resident adapters, least recently used first."""
    infos = engine.loaded_adapters()
    if not infos:
        return []
    ids = [info.adapter_id for info in infos]
    query = select(Adapter.id).where(Adapter.id.in_(ids), Adapter.tenant_id == tenant.id)
    owned = set(session.scalars(query))
    return [info for info in infos if info.adapter_id in owned]


def forget_deleted_adapter(engine: ServingBackend | None, adapter_id: str) -> None:
    """Model deletion hook: a deleted adapter must not stay resident (or reloadable) in the engine."""
    if engine is None:
        return
    try:
        engine.unload_adapter(adapter_id)
    except UnknownAdapterError:
        return
    logger.info("adapter %r unloaded because its model was deleted", adapter_id)
