"""/v1/chat/completions and /v1/completions: OpenAI's request features mapped onto the engine, and its
chunks onto OpenAI's response and stream shapes (`n` choices, logprobs, tool calls).

With tools in the prompt the answer may be tool calls: a streamed choice sends each call as soon as its
block closes (lorasp_core.serving.ToolCallReader, the same reading as a whole answer's).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from lorasp_core.serving import (
    GenerationChunk,
    ParsedToolCall,
    TokenLogprob,
    ToolCallReader,
    parse_tool_calls,
)
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


@dataclass(frozen=True)
class ToolReading:
    """How a choice's text is read back for tool calls: the offered names, and one call at most when the
    request said parallel_tool_calls: false."""

    names: set[str]
    single_call: bool


def _tool_message(text: str, tools: ToolReading) -> tuple[AssistantMessage, bool]:
    """The assistant message of a finished answer with tools in the prompt; the bool: it called some."""
    answer = parse_tool_calls(text, tools.names, single_call=tools.single_call)
    if not answer.tool_calls:
        return AssistantMessage(content=text), False
    calls = [_tool_call(c) for c in answer.tool_calls]
    return AssistantMessage(content=answer.content, tool_calls=calls), True


def _tool_call(call: ParsedToolCall) -> ToolCall:
    return ToolCall(
        id=f"call_{secrets.token_hex(12)}", function=FunctionCall(name=call.name, arguments=call.arguments)
    )


def _chat_choice(index: int, choice: ChoiceText, tools: ToolReading | None, logprobs: bool) -> ChatChoice:
    called = False
    if tools is not None:
        message, called = _tool_message(choice.text, tools)
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
        parallel_tool_calls=request.parallel_tool_calls is not False,
        **_sampling(request),
    )
    tool_reading = None
    if request.tools and request.tool_choice != "none":
        tool_reading = ToolReading(
            {tool.function.name for tool in request.tools}, single_call=request.parallel_tool_calls is False
        )
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
            payloads=_ChatPayloads(envelope, tool_reading, logprobs),
            usage_payload=_usage_payload(envelope, request.include_usage),
            started=started,
        )
        return Served(events, served_headers(stream))
    result = collect(stream, started)
    result.log("chat.completion", target, streamed=False)
    choices = [_chat_choice(i, choice, tool_reading, logprobs) for i, choice in enumerate(result.ordered())]
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
    """The SSE payloads of each engine chunk. With tools, each choice's text goes through a
    ToolCallReader: content streams as it comes (held back only where a call may begin), and each call
    is one `tool_calls` delta as soon as its block closes, so the stream adds up to the whole answer."""

    def __init__(self, envelope: dict[str, Any], tool_reading: ToolReading | None, logprobs: bool) -> None:
        self.envelope = envelope
        self.tool_reading = tool_reading
        self.logprobs = logprobs
        self.readers: dict[int, ToolCallReader] = {}

    def __call__(self, chunk: GenerationChunk) -> list[dict[str, Any]]:
        index, finish = chunk.index, chunk.finish_reason
        logprobs = (chunk.logprobs or []) if self.logprobs else None
        if self.tool_reading is None:
            out = [_chunk(self.envelope, index, {"content": chunk.text_delta}, None, logprobs)]
            out = out if chunk.text_delta or logprobs else []
            return out + ([_chunk(self.envelope, index, {}, finish, None)] if finish else [])
        reader = self.readers.get(index)
        if reader is None:
            reader = ToolCallReader(self.tool_reading.names, single_call=self.tool_reading.single_call)
            self.readers[index] = reader
        calls_before = reader.calls  # one chunk may close several blocks: each call its own index
        pieces = reader.feed(chunk.text_delta) + (reader.finish() if finish else [])
        out, content = [], ""
        for piece in pieces:
            if isinstance(piece, str):
                content += piece
                continue
            call = {"index": calls_before, **_tool_call(piece).model_dump()}
            calls_before += 1
            out.append(_chunk(self.envelope, index, {"tool_calls": [call]}, None, None))
        if content or logprobs:
            out.insert(0, _chunk(self.envelope, index, {"content": content}, None, logprobs))
        if finish:
            out.append(_chunk(self.envelope, index, {}, "tool_calls" if reader.calls else finish, None))
        return out


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
