"""Chat / text completions and classifications on base models and the tenant's adapters.

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
from typing import Any

from sqlalchemy.orm import Session
from starlette.concurrency import iterate_in_threadpool

from api import metrics
from api.errors import APIError, ErrorDetail
from api.inference_tier.backend import ServingBackend
from api.schemas.inference import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Classification,
    ClassificationList,
    ClassificationRequest,
    CompletionChoice,
    CompletionRequest,
    TextCompletion,
    Usage,
)
from api.services import serving
from api.services.catalog import offered_base_model
from lorasp_core.serving import GenerationChunk, GenerationRequest, GenerationStream
from lorasp_service.orm import Adapter, Tenant
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

logger = logging.getLogger("api.inference")

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
    except ValueError as error:
        raise APIError(400, f"Invalid request: {error}.", code="invalid_request") from error


@dataclass
class Collected:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    started: float = field(default_factory=time.perf_counter)
    first_text_at: float | None = None  # when the first text arrived (time to first token)

    def add(self, chunk: GenerationChunk) -> None:
        if chunk.text_delta and self.first_text_at is None:
            self.first_text_at = time.perf_counter()
        self.text += chunk.text_delta
        self.prompt_tokens = chunk.prompt_tokens
        self.completion_tokens = chunk.token_count
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason

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
            "%s on %r (adapter %r): %d prompt + %d completion tokens, finish=%s, streamed=%s, %.1f ms",
            kind,
            target.base_model,
            target.adapter_id,
            self.prompt_tokens,
            self.completion_tokens,
            self.finish_reason,
            streamed,
            (time.perf_counter() - self.started) * 1e3,
        )


def collect(stream: GenerationStream, started: float) -> Collected:
    """Read a stream to its end (blocking: call from a threadpool thread, as sync routes run).
    `started`: when the request went to the engine (time to first token counts from there)."""
    result = Collected(started=started)
    for chunk in stream:
        result.add(chunk)
    return result


def new_completion_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


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
    except Exception:
        logger.exception("%s stream on %r failed", kind, target.model)
        detail = ErrorDetail(message="The server had an error while generating.", type="server_error")
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


DEFAULT_CHAT_MAX_TOKENS = 256


def _envelope(completion_id: str, kind: str, created: int, model: str) -> dict[str, Any]:
    return {"id": completion_id, "object": kind, "created": created, "model": model}


def _usage_payload(envelope: dict[str, Any], include_usage: bool) -> Callable[[Usage], dict[str, Any]] | None:
    """stream_options.include_usage: one last chunk with empty choices and the usage, before [DONE]."""
    if not include_usage:
        return None
    return lambda usage: {**envelope, "choices": [], "usage": usage.model_dump()}


def _sampling(request: CompletionRequest | ChatCompletionRequest) -> dict[str, Any]:
    return {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stop": request.stop_list(),
        "seed": request.seed,
    }


def chat_completion(
    session: Session,
    settings: Settings,
    storage: BlobStorage,
    engine: ServingBackend,
    tenant: Tenant,
    request: ChatCompletionRequest,
) -> ChatCompletion | AsyncIterator[str]:
    target = resolve_target(session, settings, storage, engine, tenant, request.model, task="causal-lm")
    started = time.perf_counter()
    stream = start_generation(
        engine,
        storage,
        target,
        messages=[m.as_engine_message() for m in request.messages],
        max_tokens=request.token_limit(DEFAULT_CHAT_MAX_TOKENS),
        **_sampling(request),
    )
    completion_id, created = new_completion_id("chatcmpl"), int(time.time())
    envelope = _envelope(completion_id, "chat.completion.chunk", created, target.model)

    def choice(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
        return {**envelope, "choices": [dict(index=0, delta=delta, logprobs=None, finish_reason=finish)]}

    def payloads(chunk: GenerationChunk) -> list[dict[str, Any]]:
        out = [choice({"content": chunk.text_delta}, None)] if chunk.text_delta else []
        return out + ([choice({}, chunk.finish_reason)] if chunk.finish_reason else [])

    if request.stream:
        head = [choice({"role": "assistant", "content": ""}, None)]
        usage = _usage_payload(envelope, request.include_usage)
        return sse_stream(
            stream,
            target,
            "chat.completion",
            head=head,
            payloads=payloads,
            usage_payload=usage,
            started=started,
        )
    result = collect(stream, started)
    result.log("chat.completion", target, streamed=False)
    message = AssistantMessage(content=result.text)
    return ChatCompletion(
        id=completion_id,
        created=created,
        model=target.model,
        usage=result.usage(),
        choices=[ChatChoice(message=message, finish_reason=result.finish_reason)],  # type: ignore[arg-type]
    )


def text_completion(
    session: Session,
    settings: Settings,
    storage: BlobStorage,
    engine: ServingBackend,
    tenant: Tenant,
    request: CompletionRequest,
) -> TextCompletion | AsyncIterator[str]:
    target = resolve_target(session, settings, storage, engine, tenant, request.model, task="causal-lm")
    started = time.perf_counter()
    stream = start_generation(
        engine, storage, target, prompt=request.prompt, max_tokens=request.max_tokens, **_sampling(request)
    )
    completion_id, created = new_completion_id("cmpl"), int(time.time())
    envelope = _envelope(completion_id, "text_completion", created, target.model)

    def choice(text: str, finish: str | None) -> dict[str, Any]:
        return {**envelope, "choices": [dict(index=0, text=text, logprobs=None, finish_reason=finish)]}

    def payloads(chunk: GenerationChunk) -> list[dict[str, Any]]:
        out = [choice(chunk.text_delta, None)] if chunk.text_delta else []
        return out + ([choice("", chunk.finish_reason)] if chunk.finish_reason else [])

    if request.stream:
        usage = _usage_payload(envelope, request.include_usage)
        return sse_stream(
            stream,
            target,
            "text_completion",
            head=[],
            payloads=payloads,
            usage_payload=usage,
            started=started,
        )
    result = collect(stream, started)
    result.log("text_completion", target, streamed=False)
    return TextCompletion(
        id=completion_id,
        created=created,
        model=target.model,
        usage=result.usage(),
        choices=[CompletionChoice(text=result.text, finish_reason=result.finish_reason)],  # type: ignore[arg-type]
    )
