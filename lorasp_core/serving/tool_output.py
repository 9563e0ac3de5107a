"""Reading tool calls back out of generated text.

Tool-calling templates (Qwen2.5, Hermes, lorasp's tiny tool template) have the model write each call as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; forced calls are generated under exactly
that grammar (lorasp_core.serving.grammar). A block whose JSON does not parse, or that names no offered
tool, stays in the content as text: the caller sees what the model wrote instead of losing it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field

from lorasp_core.data.formats import DatasetProblem
from lorasp_core.data.tool_calls import check_function_call

_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


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


def parse_tool_calls(text: str, tool_names: Collection[str]) -> ToolAnswer:
    """The calls in `text` (in order) and the rest of it as content."""
    calls: list[ParsedToolCall] = []
    kept: list[str] = []
    position = 0
    for match in _BLOCK.finditer(text):
        call = _call(match.group(1), tool_names)
        if call is None:
            continue
        calls.append(call)
        kept.append(text[position : match.start()])
        position = match.end()
    kept.append(text[position:])
    content = "".join(kept).strip() if calls else text
    return ToolAnswer(content or None, calls)
