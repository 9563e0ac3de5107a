"""What chat / text completions (api.services.completions) and classifications share: resolving `model`,
starting a generation, collecting or streaming its chunks.

`model` is a base model enabled on this server or one of the tenant's fine-tuned model ids; an adapter
is hot-loaded on demand. The engine's generate() is blocking and iterator-based: routes are sync (run
in the threadpool) and streams are read with `iterate_in_threadpool`, so the event loop never blocks and
concurrent requests meet in the engine's batch scheduler.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session
from starlette.concurrency import iterate_in_threadpool

from api import metrics
from api.errors import APIError, ErrorDetail
from api.inference_tier.backend import ServingBackend
from api.inference_tier.remote_stream import RemoteGenerationStream
from api.inference_tier.wire import PROCESS_HEADER
from api.schemas.inference import Classification, ClassificationList, ClassificationRequest, Usage
from api.services import serving
from api.services.catalog import offered_base_model
from lorasp_core.serving import (
    GenerationChunk,
    GenerationRequest,
    GenerationStream,
    GrammarError,
    TokenLogprob,
    ToolsUnsupportedError,
)
from lorasp_service.orm import Adapter, Tenant
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

logger = logging.getLogger("api.inference")
AnswerT = TypeVar("AnswerT")

_ENDPOINT_FOR_TASK = {
    "causal-lm": "/v1/chat/completions or /v1/completions",
    "seq-cls": "/v1/classifications",
}


@dataclass(frozen=True)
class Target:
    """What a request's `model` resolved to: a base model, and the tenant's adapter on it (or None)."""

    model: str  # as the client named it (echoed in responses)
    base_model: str
    adapter: Adapter | None

    @property
    def adapter_id(self) -> str | None:
        return None if self.adapter is None else self.adapter.id

    @property
    def resident(self) -> str:
        """The engine's name for the base it runs on (quantized as the adapter trained: resident_base)."""
        return self.base_model if self.adapter is None else serving.resident_base(self.adapter)


def resolve_target(
    session: Session,
    settings: Settings,
    storage: BlobStorage,
    engine: ServingBackend,
    tenant: Tenant,
    model: str,
    *,
    task: str,
) -> Target:
    entry = offered_base_model(session, settings, tenant.id, model)
    found_task: str | None = entry.task if entry is not None else None
    adapter = None
    if entry is None:
        adapter = serving.tenant_adapter(session, tenant, model, param="model")
        found_task = adapter.task
    if found_task != task:
        raise APIError(
            400,
            f"Model '{model}' is a {found_task} model; use {_ENDPOINT_FOR_TASK.get(str(found_task))}.",
            param="model",
            code="model_not_supported",
        )
    if adapter is None:
        return Target(model, model, None)
    serving.ensure_loaded(engine, storage, adapter)
    return Target(model, adapter.base_model, adapter)


def start_generation(
    engine: ServingBackend, storage: BlobStorage, target: Target, **request: Any
) -> GenerationStream:
    """Queue the request in the engine; bad requests (e.g. a prompt over the context) are 400s here."""
    generation = GenerationRequest(model=target.resident, adapter_id=target.adapter_id, **request)
    try:
        with serving.engine_errors("model"):
            return serving.with_reload(engine, storage, target.adapter, lambda: engine.generate(generation))
    except APIError:
        raise
    except GrammarError as error:
        raise APIError(
            400, f"Invalid {error.field}: {error.problem}.", param=error.field, code="unsupported_schema"
        ) from error
    except ToolsUnsupportedError as error:
        raise APIError(
            400, f"Invalid tools: {error}.", param="tools", code="unsupported_tool_calls"
        ) from error
    except ValueError as error:
        raise APIError(400, f"Invalid request: {error}.", code="invalid_request") from error


@dataclass
class ChoiceText:
    """One choice's output so far."""

    text: str = ""
    completion_tokens: int = 0
    finish_reason: str = "stop"
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Collected:
    choices: dict[int, ChoiceText] = field(default_factory=dict)
    prompt_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_text_at: float | None = None  # when the first text arrived (time to first token)

    def add(self, chunk: GenerationChunk) -> None:
        if chunk.text_delta and self.first_text_at is None:
            self.first_text_at = time.perf_counter()
        choice = self.choices.setdefault(chunk.index, ChoiceText())
        choice.text += chunk.text_delta
        choice.completion_tokens = chunk.token_count
        choice.logprobs.extend(chunk.logprobs or [])
        self.prompt_tokens = chunk.prompt_tokens
        if chunk.finish_reason is not None:
            choice.finish_reason = chunk.finish_reason

    def ordered(self) -> list[ChoiceText]:
        return [self.choices[index] for index in sorted(self.choices)]

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices.values())

    def usage(self) -> Usage:
        total = self.prompt_tokens + self.completion_tokens
        return Usage(
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, total_tokens=total
        )

    def log(self, kind: str, target: Target, *, streamed: bool) -> None:
        """Log the finished generation and count it in the metrics."""
        ttft = None if self.first_text_at is None else self.first_text_at - self.started
        metrics.observe_generation(
            target.base_model, target.adapter_id, self.prompt_tokens, self.completion_tokens, ttft
        )
        logger.info(
            "%s on %r (adapter %r): %d prompt + %d completion tokens, %d choices, finish=%s, "
            "streamed=%s, %.1f ms",
            kind,
            target.base_model,
            target.adapter_id,
            self.prompt_tokens,
            self.completion_tokens,
            len(self.choices),
            ",".join(choice.finish_reason for choice in self.ordered()),
            streamed,
            (time.perf_counter() - self.started) * 1e3,
        )


def collect(stream: GenerationStream, started: float) -> Collected:
    """Read a stream to its end (blocking: call from a threadpool thread, as sync routes run).
    `started`: when the request went to the engine (time to first token counts from there). A failure
    mid-answer (e.g. the inference process lost: 502) is the client-facing error of engine_errors."""
    result = Collected(started=started)
    with serving.engine_errors(None):
        for chunk in stream:
            result.add(chunk)
    return result


def served_headers(stream: GenerationStream) -> dict[str, str]:
    """Response headers telling which inference process answered (none for the in-process engine)."""
    if isinstance(stream, RemoteGenerationStream) and stream.process_name:
        return {PROCESS_HEADER: stream.process_name}
    return {}


@dataclass(frozen=True)
class Served(Generic[AnswerT]):
    """A completion's answer (a body, or SSE events) and the headers to send with it."""

    answer: AnswerT | AsyncIterator[str]
    headers: dict[str, str]


def new_completion_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


_STREAM_FAILED = ErrorDetail(message="The server had an error while generating.", type="server_error")

# Builds the SSE payloads for one engine chunk (content, then finish) in an endpoint's chunk format.
ChunkPayloads = Callable[[GenerationChunk], list[dict[str, Any]]]


async def sse_stream(
    stream: GenerationStream,
    target: Target,
    kind: str,
    *,
    head: list[dict[str, Any]],
    payloads: ChunkPayloads,
    usage_payload: Callable[[Usage], dict[str, Any]] | None,
    started: float | None = None,
) -> AsyncIterator[str]:
    """Server-sent events ending with `data: [DONE]`; a client that goes away cancels the generation.
    `started`: when the request went to the engine (default: now)."""
    collected = Collected() if started is None else Collected(started=started)
    try:
        for payload in head:
            yield _sse(payload)
        async for chunk in iterate_in_threadpool(stream):
            collected.add(chunk)
            for payload in payloads(chunk):
                yield _sse(payload)
        if usage_payload is not None:
            yield _sse(usage_payload(collected.usage()))
        yield "data: [DONE]\n\n"
        collected.log(kind, target, streamed=True)
    except Exception as error:
        mapped = serving.api_error(error, None)  # a typed failure says what it is, as a non-streamed one
        if mapped is None:
            logger.exception("%s stream on %r failed", kind, target.model)
        detail = mapped.detail if mapped is not None else _STREAM_FAILED
        yield _sse({"error": detail.model_dump()})
    finally:
        stream.cancel()  # no-op once finished; frees the row when the client disconnected mid-stream


def classify(
    session: Session,
    settings: Settings,
    storage: BlobStorage,
    engine: ServingBackend,
    tenant: Tenant,
    request: ClassificationRequest,
) -> ClassificationList:
    target = resolve_target(session, settings, storage, engine, tenant, request.model, task="seq-cls")
    texts = request.texts()
    started = time.perf_counter()
    with serving.engine_errors("model"):
        results = serving.with_reload(
            engine,
            storage,
            target.adapter,
            lambda: engine.classify(target.resident, target.adapter_id, texts),
        )
    logger.info(
        "classification on %r (adapter %r): %d inputs, %.1f ms",
        target.base_model,
        target.adapter_id,
        len(texts),
        (time.perf_counter() - started) * 1e3,
    )
    data = [
        Classification(index=i, label=r.label, score=r.score, scores=dict(r.scores))
        for i, r in enumerate(results)
    ]
    return ClassificationList(model=target.model, data=data)
