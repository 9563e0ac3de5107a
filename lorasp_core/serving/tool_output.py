"""Reading tool calls back out of generated text.

Tool-calling templates (Qwen2.5, Hermes, lorasp's tiny tool template) have the model write each call as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; forced calls are generated under exactly
that grammar (lorasp_core.serving.grammar). A block whose JSON does not parse, or that names no offered
tool, stays in the content as text: the caller sees what the model wrote instead of losing it.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field

from lorasp_core.data.formats import DatasetProblem
from lorasp_core.data.tool_calls import check_function_call

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"  # the tags a template wraps each call in


@dataclass(frozen=True)
class ParsedToolCall:
    name: str
    arguments: str  # a JSON object as text, as OpenAI returns `function.arguments`


@dataclass(frozen=True)
class ToolAnswer:
    content: str | None  # the text outside the calls; None when there is none
    tool_calls: list[ParsedToolCall] = field(default_factory=list)


def _call(block: str, tool_names: Collection[str]) -> ParsedToolCall | None:
    try:
        value = json.loads(block)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    arguments = value.get("arguments")
    if isinstance(arguments, dict):  # the template's form; the shared check wants OpenAI's string
        value = {**value, "arguments": json.dumps(arguments, ensure_ascii=False)}
    problems: list[DatasetProblem] = []
    checked = check_function_call(value, "tool_call", 0, problems)
    if checked is None or checked[0] not in tool_names:
        return None
    name, parsed_arguments = checked
    return ParsedToolCall(name, json.dumps(parsed_arguments, ensure_ascii=False))


class ToolCallReader:
    """Reads tool calls out of text as it streams: `feed` each delta, then `finish`; each returns pieces
    in order, content text (str) or a ParsedToolCall as soon as its block closes.

    Text is held back only while it may still become part of a call: a possible prefix of `<tool_call>`,
    an open block, and whitespace next to it. Whitespace touching a call is dropped, and content on both
    sides of calls is joined by one space. `single_call` (OpenAI's parallel_tool_calls=false): after the
    first call nothing more is read, as if the model had stopped there.
    """

    def __init__(self, tool_names: Collection[str], *, single_call: bool = False) -> None:
        self.tool_names = tool_names
        self.single_call = single_call
        self.pending = ""  # text not decided yet
        self.calls = 0
        self.sent_content = False
        self.after_call = False  # the text since the last call is whitespace only so far
        self.done = False

    def feed(self, text: str) -> list[str | ParsedToolCall]:
        if self.done:
            return []
        self.pending += text
        out: list[str | ParsedToolCall] = []
        while True:
            if self.after_call:
                self.pending = self.pending.lstrip()
                if not self.pending:
                    return out
            start = self.pending.find(_OPEN)
            if start == -1:
                self._content(out, self.pending[: len(self.pending) - _held(self.pending)])
                return out
            end = self.pending.find(_CLOSE, start)
            if end == -1:
                self._content(out, self.pending[:start].rstrip())
                return out
            stop = end + len(_CLOSE)
            call = _call(self.pending[start + len(_OPEN) : end].strip(), self.tool_names)
            if call is None:  # not a call of an offered tool: it stays content
                self._content(out, self.pending[:stop])
                continue
            rest = self.pending[stop:]
            self._content(out, self.pending[:start].rstrip())
            out.append(call)
            self.calls += 1
            self.pending, self.after_call = rest, True
            if self.single_call:
                self.done, self.pending = True, ""
                return out

    def finish(self) -> list[str | ParsedToolCall]:
        """The text still held (an unclosed block or a partial tag stays content)."""
        out: list[str | ParsedToolCall] = []
        if not self.done:
            self._content(out, self.pending.lstrip() if self.after_call else self.pending)
        self.done = True
        return out

    def _content(self, out: list[str | ParsedToolCall], text: str) -> None:
        """Emit the first len(text) characters of the pending text as content."""
        if not text:
            return
        self.pending = self.pending[len(text) :]
        if self.after_call and self.sent_content:
            text = " " + text
        self.after_call, self.sent_content = False, True
        out.append(text)


def _held(text: str) -> int:
    """Characters at the end of `text` that may still begin a call: a proper prefix of the opening tag,
    and the whitespace before it."""
    for k in range(min(len(_OPEN) - 1, len(text)), 0, -1):
        if text.endswith(_OPEN[:k]):
            break
    else:
        k = 0
    return len(text) - len(text[: len(text) - k].rstrip())


def parse_tool_calls(text: str, tool_names: Collection[str], *, single_call: bool = False) -> ToolAnswer:
    """The calls in a finished text (in order) and the rest of it as content: the streamed reading of
    the same text, so a streamed answer and a whole one agree."""
    reader = ToolCallReader(tool_names, single_call=single_call)
    pieces = reader.feed(text) + reader.finish()
    calls = [piece for piece in pieces if isinstance(piece, ParsedToolCall)]
    content = "".join(piece for piece in pieces if isinstance(piece, str))
    return ToolAnswer(content or None, calls)
