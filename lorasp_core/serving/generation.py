"""Request-side helpers: rendering prompts, and the iterator a caller reads streamed chunks from."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from lorasp_core.data.tool_template import template_tool_problem
from lorasp_core.serving.chat_template import render_chat_template
from lorasp_core.serving.grammar import GrammarSpec, response_format_grammar, tool_call_grammar
from lorasp_core.serving.resident import ResidentModel
from lorasp_core.serving.types import (
    GenerationChunk,
    GenerationRequest,
    TemplateBudget,
    ToolsUnsupportedError,
)


def request_grammar(request: GenerationRequest) -> GrammarSpec | None:
    """The grammar a request's rows decode under: forced tool calls first, else its response format."""
    if request.renders_tools():
        assert request.tools is not None
        forced = tool_call_grammar(request.tools, request.tool_choice, parallel=request.parallel_tool_calls)
        if forced is not None:
            return forced
    return response_format_grammar(request.response_format)


@lru_cache(maxsize=256)
def _template_tool_problem(template: str, variables: tuple[tuple[str, str], ...]) -> str | None:
    # A generous fixed budget: this renders a tiny probe conversation, once per template.
    budget = TemplateBudget()

    def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
        return render_chat_template(template, messages, budget=budget, variables=dict(variables), tools=tools)

    return template_tool_problem(render)


def _check_tool_support(template: str, variables: Mapping[str, str]) -> None:
    problem = _template_tool_problem(template, tuple(sorted(variables.items())))
    if problem is not None:
        raise ToolsUnsupportedError(problem)


def render_prompt_ids(
    resident: ResidentModel, request: GenerationRequest, chat_template: str | None, budget: TemplateBudget
) -> list[int]:
    """Token ids of the prompt: messages through the adapter's chat template (else the tokenizer's).

    The template renders in the budgeted sandbox *outside* the tokenizer lock (it may be a tenant's slow
    template; the lock is shared by every request on this base model); only tokenizing takes the lock.
    """
    tokenizer = resident.tokenizer
    if request.messages is not None:
        template = chat_template or getattr(tokenizer, "chat_template", None)
        if not template:
            raise ValueError(
                "messages were given but neither the adapter nor the tokenizer has a chat template"
            )
        variables = resident.template_variables
        tools = request.tools if request.renders_tools() else None
        if tools:
            _check_tool_support(template, variables)
        text = render_chat_template(
            template, request.messages, budget=budget, variables=variables, tools=tools
        )
        _check_length(resident, text)
        with resident.tokenizer_lock:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        assert request.prompt is not None
        _check_length(resident, request.prompt)
        with resident.tokenizer_lock:
            ids = tokenizer(request.prompt)["input_ids"]
    if not ids and getattr(tokenizer, "bos_token_id", None) is not None:
        ids = [tokenizer.bos_token_id]  # an empty prompt still needs one token to condition on
    if not ids:
        raise ValueError("the prompt is empty")
    return [int(i) for i in ids]


def _check_length(resident: ResidentModel, text: str) -> None:
    limit = resident.max_text_chars
    if limit is not None and len(text) > limit:
        raise ValueError(
            f"the prompt is {len(text)} characters long, more than the model's context can hold "
            f"(at most {limit} characters)"
        )


class GenerationStream(Iterator[GenerationChunk]):
    """Chunks of one request (of all its `choices`, told apart by `chunk.index`), produced by the
    decoding thread and read by the caller.

    Iteration ends after every choice sent a chunk with a finish_reason; an engine-side failure is re-raised
    in the reader. `cancel()` (e.g. a disconnected SSE client) makes the decoder drop the row early.
    """

    def __init__(self, choices: int = 1) -> None:
        self._queue: queue.Queue[GenerationChunk | BaseException] = queue.Queue()
        self._cancelled = threading.Event()
        self._done = False
        self._unfinished = choices  # the stream ends when every choice has finished

    # producer side
    def put(self, chunk: GenerationChunk) -> None:
        self._queue.put(chunk)

    def fail(self, error: BaseException) -> None:
        self._queue.put(error)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # consumer side
    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> GenerationChunk:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if item.finish_reason is not None:
            self._unfinished -= 1
            self._done = self._unfinished <= 0
        return item

    def text(self) -> str:
        """Read the stream to its end and return the whole text."""
        return "".join(chunk.text_delta for chunk in self)
