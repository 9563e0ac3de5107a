"""The wire format between the API and `lorasp inference`: engine dataclasses as JSON, errors as types.

Values are (de)serialised generically from their dataclass fields by pydantic's `TypeAdapter`, so a
field added to `GenerationRequest`, `GenerationChunk`, `GenerationResult`, `ClassificationResult` or
`AdapterInfo` (nested dataclasses included) crosses the wire with no change here. Keys a receiver does
not know are dropped (an older process in a rolling upgrade), missing ones take their defaults.

Engine errors travel as `{"error": {"kind", "message", "fields"}}` and are raised again on the API side
as the same exception types, so `api.services.serving.engine_errors` maps them as it does in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import TypeAdapter

from lorasp_core.models import ModelUnavailableError
from lorasp_core.serving import (
    AdapterCacheFullError,
    AdapterLoadError,
    AdapterQuotaError,
    ChatTemplateError,
    GrammarError,
    ServingOverloadedError,
    ToolsUnsupportedError,
    UnknownAdapterError,
)

T = TypeVar("T")

# One NDJSON line per event of a generation stream: {"chunk": {...}} or {"error": {...}}.
CHUNK_KEY, ERROR_KEY = "chunk", "error"
NDJSON_MEDIA_TYPE = "application/x-ndjson"
# The inference process names itself on every /generate answer; the API forwards it to its client.
PROCESS_HEADER = "x-lorasp-inference-process"


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}  # building one compiles a validator: once per type


def _adapter(cls: Any) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(cls)
    if adapter is None:
        adapter = _ADAPTERS[cls] = TypeAdapter(cls)
    return adapter


def to_wire(value: Any) -> Any:
    """A dataclass (or a list of them) as JSON-ready data: every field, recursively."""
    return _adapter(type(value)).dump_python(value, mode="json")


def from_wire(cls: type[T], data: Any) -> T:
    """Build `cls` (a dataclass, or e.g. list[SomeDataclass]) from `to_wire` data; raises ValueError."""
    value: T = _adapter(cls).validate_python(data)
    return value


class InferenceProcessError(RuntimeError):
    """An inference process failed in a way that has no engine error type (its own bug, a 500)."""


class InferenceUnavailableError(RuntimeError):
    """No inference process could be reached (every one is down or refused the connection).
    `retry_after_s`: when one may be back (the router's backoff), told to the client as Retry-After."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InferenceStreamBrokenError(RuntimeError):
    """The connection to the inference process was lost after the answer started streaming (the
    process died or was cut off mid-answer): the API answers 502, or ends an SSE stream with an error."""


@dataclass(frozen=True)
class ErrorKind:
    """How one engine error type crosses the wire: its name there, its HTTP status on the internal API,
    and the constructor arguments it keeps as attributes (none: it is rebuilt from its message)."""

    kind: str
    error_type: type[Exception]
    status: int
    fields: tuple[str, ...] = ()


# Subclasses before their bases: the first entry an error is an instance of names it.
ERROR_KINDS: tuple[ErrorKind, ...] = (
    ErrorKind("adapter_quota", AdapterQuotaError, 429, ("owner", "kind", "limit")),
    ErrorKind("adapter_cache_full", AdapterCacheFullError, 503),
    ErrorKind("adapter_load", AdapterLoadError, 400, ("adapter_id", "file", "problem")),
    ErrorKind("chat_template", ChatTemplateError, 400, ("problem",)),
    ErrorKind("unknown_adapter", UnknownAdapterError, 404),
    ErrorKind("model_unavailable", ModelUnavailableError, 503),
    # The process's wait queue is full: the API answers 503 + Retry-After (no failover: every process
    # of this adapter's order would be as loaded, and the client is told when to come back).
    ErrorKind("overloaded", ServingOverloadedError, 503, ("waiting", "limit", "retry_after_s")),
    # Before ValueError (their base): the API answers them with their own codes and fields.
    ErrorKind("grammar", GrammarError, 400, ("field", "problem")),
    ErrorKind("tools_unsupported", ToolsUnsupportedError, 400),
    ErrorKind("invalid_request", ValueError, 400),
    ErrorKind("unavailable", InferenceUnavailableError, 503),
)
_INTERNAL = ErrorKind("internal", InferenceProcessError, 500)
_BY_NAME = {entry.kind: entry for entry in (*ERROR_KINDS, _INTERNAL)}


def error_kind(error: BaseException) -> ErrorKind:
    return next((entry for entry in ERROR_KINDS if isinstance(error, entry.error_type)), _INTERNAL)


def error_to_wire(error: BaseException) -> dict[str, Any]:
    entry = error_kind(error)
    fields = {name: getattr(error, name) for name in entry.fields}
    return {"kind": entry.kind, "message": str(error), "fields": fields}


def error_from_wire(data: Any) -> Exception:
    """The exception an `error_to_wire` payload stands for; anything malformed is an internal error."""
    if not isinstance(data, dict):
        return InferenceProcessError(f"malformed error from the inference process: {data!r}")
    entry = _BY_NAME.get(str(data.get("kind")), _INTERNAL)
    message = str(data.get("message", ""))
    fields = data.get("fields")
    if entry.fields and isinstance(fields, dict) and all(name in fields for name in entry.fields):
        return entry.error_type(*(fields[name] for name in entry.fields))
    return entry.error_type(message)
