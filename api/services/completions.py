"""/v1/chat/completions and /v1/completions: OpenAI's request features mapped onto the engine, and its
chunks onto OpenAI's response and stream shapes (`n` choices, logprobs, tool calls).

With tools in the prompt the answer may be tool calls, which only parse once complete: a streamed
choice then holds its text back and sends content or `tool_calls` when it finishes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from api.inference_tier.backend import ServingBackend
from api.schemas.inference import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    CompletionChoice,
    CompletionRequest,
    TextCompletion,
    Usage,
)
from api.schemas.inference_features import (
    FunctionCall,
    ToolCall,
    chat_logprobs,
    completion_logprobs,
    engine_response_format,
    engine_tool_choice,
)
from api.services.inference import (
    ChoiceText,
    Served,
    collect,
    new_completion_id,
    resolve_target,
    served_headers,
    sse_stream,
    start_generation,
)
from lorasp_core.serving import GenerationChunk, TokenLogprob, parse_tool_calls
from lorasp_service.orm import Tenant
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

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
        "n": request.n,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
    }


def _tool_message(text: str, tool_names: set[str]) -> tuple[AssistantMessage, bool]:
    """The assistant message of a finished answer with tools in the prompt; the bool: it called some."""
    answer = parse_tool_calls(text, tool_names)
    if not answer.tool_calls:
        return AssistantMessage(content=text), False
    calls = [
        ToolCall(
            id=f"call_{secrets.token_hex(12)}", function=FunctionCall(name=c.name, arguments=c.arguments)
        )
        for c in answer.tool_calls
    ]
    return AssistantMessage(content=answer.content, tool_calls=calls), True


def _chat_choice(index: int, choice: ChoiceText, tool_names: set[str] | None, logprobs: bool) -> ChatChoice:
    called = False
    if tool_names is not None:
        message, called = _tool_message(choice.text, tool_names)
    else:
        message = AssistantMessage(content=choice.text)
    return ChatChoice(
        index=index,
        message=message,
        logprobs=chat_logprobs(choice.logprobs) if logprobs else None,
        finish_reason="tool_calls" if called else choice.finish_reason,  # type: ignore[arg-type]
    )


def chat_completion(
    session: Session,
    settings: Settings,
    storage: BlobStorage,
    engine: ServingBackend,
    tenant: Tenant,
    request: ChatCompletionRequest,
) -> Served[ChatCompletion]:
    target = resolve_target(session, settings, storage, engine, tenant, request.model, task="causal-lm")
    started = time.perf_counter()
    tools = [tool.as_engine_tool() for tool in request.tools] if request.tools else None
    stream = start_generation(
        engine,
        storage,
        target,
        messages=[m.as_engine_message() for m in request.messages],
        max_tokens=request.token_limit(DEFAULT_CHAT_MAX_TOKENS),
        logprobs=bool(request.logprobs),
        top_logprobs=request.top_logprobs or 0,
        response_format=engine_response_format(request.response_format),
        tools=tools,
        tool_choice=engine_tool_choice(request.tool_choice),
        **_sampling(request),
    )
    tool_names = None
    if request.tools and request.tool_choice != "none":
        tool_names = {tool.function.name for tool in request.tools}
    logprobs = bool(request.logprobs)
    completion_id, created = new_completion_id("chatcmpl"), int(time.time())
    if request.stream:
        envelope = _envelope(completion_id, "chat.completion.chunk", created, target.model)
        head = [
            _chunk(envelope, i, {"role": "assistant", "content": ""}, None, None) for i in range(request.n)
        ]
        events = sse_stream(
            stream,
            target,
            "chat.completion",
            head=head,
            payloads=_ChatPayloads(envelope, tool_names, logprobs),
            usage_payload=_usage_payload(envelope, request.include_usage),
            started=started,
        )
        return Served(events, served_headers(stream))
    result = collect(stream, started)
    result.log("chat.completion", target, streamed=False)
    choices = [_chat_choice(i, choice, tool_names, logprobs) for i, choice in enumerate(result.ordered())]
    completion = ChatCompletion(
        id=completion_id, created=created, model=target.model, usage=result.usage(), choices=choices
    )
    return Served(completion, served_headers(stream))


def _chunk(
    envelope: dict[str, Any],
    index: int,
    delta: dict[str, Any],
    finish: str | None,
    logprobs: list[TokenLogprob] | None,
) -> dict[str, Any]:
    shown = None if logprobs is None else chat_logprobs(logprobs).model_dump()
    choice = {"index": index, "delta": delta, "logprobs": shown, "finish_reason": finish}
    return {**envelope, "choices": [choice]}


class _ChatPayloads:
    """The SSE payloads of each engine chunk; with tools, a choice's text is held until it finishes."""

    def __init__(self, envelope: dict[str, Any], tool_names: set[str] | None, logprobs: bool) -> None:
        self.envelope = envelope
        self.tool_names = tool_names
        self.logprobs = logprobs
        self.held: dict[int, ChoiceText] = {}

    def __call__(self, chunk: GenerationChunk) -> list[dict[str, Any]]:
        index, finish = chunk.index, chunk.finish_reason
        logprobs = (chunk.logprobs or []) if self.logprobs else None
        if self.tool_names is None:
            out = [_chunk(self.envelope, index, {"content": chunk.text_delta}, None, logprobs)]
            out = out if chunk.text_delta or logprobs else []
            return out + ([_chunk(self.envelope, index, {}, finish, None)] if finish else [])
        held = self.held.setdefault(index, ChoiceText())
        held.text += chunk.text_delta
        held.logprobs.extend(logprobs or [])
        if finish is None:
            return []
        message, called = _tool_message(held.text, self.tool_names)
        delta: dict[str, Any] = {"content": message.content}
        if message.tool_calls:
            delta["tool_calls"] = [
                {"index": i, **call.model_dump()} for i, call in enumerate(message.tool_calls)
            ]
        shown = held.logprobs if self.logprobs else None
        last = _chunk(self.envelope, index, {}, "tool_calls" if called else finish, None)
        return [_chunk(self.envelope, index, delta, None, shown), last]


def text_completion(
    session: Session,
    settings: Settings,
    storage: BlobStorage,
    engine: ServingBackend,
    tenant: Tenant,
    request: CompletionRequest,
) -> Served[TextCompletion]:
    target = resolve_target(session, settings, storage, engine, tenant, request.model, task="causal-lm")
    started = time.perf_counter()
    stream = start_generation(
        engine,
        storage,
        target,
        prompt=request.prompt,
        max_tokens=request.max_tokens,
        logprobs=request.logprobs is not None,
        top_logprobs=request.logprobs or 0,
        **_sampling(request),
    )
    completion_id, created = new_completion_id("cmpl"), int(time.time())
    envelope = _envelope(completion_id, "text_completion", created, target.model)
    with_logprobs = request.logprobs is not None
    offsets: dict[int, int] = {}  # per choice: characters of token text sent so far (text_offset)

    def choice(
        index: int, text: str, finish: str | None, logprobs: list[TokenLogprob] | None
    ) -> dict[str, Any]:
        shown = None
        if logprobs is not None:
            shown = completion_logprobs(logprobs, offsets.get(index, 0)).model_dump()
            offsets[index] = offsets.get(index, 0) + sum(len(entry.token) for entry in logprobs)
        entry = {"index": index, "text": text, "logprobs": shown, "finish_reason": finish}
        return {**envelope, "choices": [entry]}

    def payloads(chunk: GenerationChunk) -> list[dict[str, Any]]:
        logprobs = (chunk.logprobs or []) if with_logprobs else None
        out = [choice(chunk.index, chunk.text_delta, None, logprobs)] if chunk.text_delta or logprobs else []
        return out + ([choice(chunk.index, "", chunk.finish_reason, None)] if chunk.finish_reason else [])

    if request.stream:
        usage = _usage_payload(envelope, request.include_usage)
        events = sse_stream(
            stream,
            target,
            "text_completion",
            head=[],
            payloads=payloads,
            usage_payload=usage,
            started=started,
        )
        return Served(events, served_headers(stream))
    result = collect(stream, started)
    result.log("text_completion", target, streamed=False)
    choices = [
        CompletionChoice(
            index=i,
            text=c.text,
            logprobs=completion_logprobs(c.logprobs) if with_logprobs else None,
            finish_reason=c.finish_reason,  # type: ignore[arg-type]
        )
        for i, c in enumerate(result.ordered())
    ]
    completion = TextCompletion(
        id=completion_id, created=created, model=target.model, usage=result.usage(), choices=choices
    )
    return Served(completion, served_headers(stream))
