"""Tool calls read back from generated text, and the one-call rule of parallel_tool_calls=false."""

from __future__ import annotations

import json

import pytest

from lorasp_core.serving.grammar import tool_call_grammar
from lorasp_core.serving.tool_output import ParsedToolCall, ToolCallReader, parse_tool_calls
from lorasp_core.serving.types import ToolChoice

NAMES = {"get_weather", "get_time"}
TWO_CALLS = (
    'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>\n'
    '<tool_call>{"name": "get_time", "arguments": {}}</tool_call> done'
)
TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in NAMES]


def test_every_call_is_read_in_order_and_the_rest_is_content() -> None:
    answer = parse_tool_calls(TWO_CALLS, NAMES)
    assert [c.name for c in answer.tool_calls] == ["get_weather", "get_time"]
    assert json.loads(answer.tool_calls[0].arguments) == {"city": "Oslo"}
    assert answer.content == "Let me check. done"  # whitespace touching calls dropped, one space joins


def test_single_call_keeps_the_first_call_and_nothing_after_it() -> None:
    answer = parse_tool_calls(TWO_CALLS, NAMES, single_call=True)
    assert [c.name for c in answer.tool_calls] == ["get_weather"]
    assert answer.content == "Let me check."


def test_an_unknown_tool_stays_content_and_does_not_count_as_the_one_call() -> None:
    text = '<tool_call>{"name": "nope", "arguments": {}}</tool_call>' + TWO_CALLS
    answer = parse_tool_calls(text, NAMES, single_call=True)
    assert [c.name for c in answer.tool_calls] == ["get_weather"]
    assert answer.content is not None and '"nope"' in answer.content


def test_required_without_parallel_calls_compiles_to_exactly_one_call() -> None:
    parallel = tool_call_grammar(TOOLS, ToolChoice("required"))
    single = tool_call_grammar(TOOLS, ToolChoice("required"), parallel=False)
    assert parallel is not None and single is not None
    assert parallel.lark.splitlines()[0] == 'start: call ("\\n" call)*'
    assert single.lark.splitlines()[0] == "start: call"


STREAMED_TEXTS = [
    TWO_CALLS,
    "no calls at all, with a trailing <tool",
    'a <tool_call>{"name": "nope", "arguments": {}}</tool_call> b',
    'unclosed <tool_call>{"name": "get_time", "arguments": {}}',
    '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
    "  leading and trailing whitespace  ",
]


@pytest.mark.parametrize("text", STREAMED_TEXTS)
@pytest.mark.parametrize("single_call", [False, True])
def test_reading_a_stream_piece_by_piece_gives_the_whole_reading(text: str, single_call: bool) -> None:
    for step in (1, 3, 7):
        reader = ToolCallReader(NAMES, single_call=single_call)
        pieces: list[str | ParsedToolCall] = []
        for start in range(0, len(text), step):
            pieces += reader.feed(text[start : start + step])
        pieces += reader.finish()
        whole = parse_tool_calls(text, NAMES, single_call=single_call)
        assert [p for p in pieces if isinstance(p, ParsedToolCall)] == whole.tool_calls
        assert ("".join(p for p in pieces if isinstance(p, str)) or None) == whole.content


def test_text_that_cannot_begin_a_call_is_not_held_back() -> None:
    reader = ToolCallReader(NAMES)
    assert reader.feed("Hello") == ["Hello"]
    assert reader.feed(" <tool") == []  # may begin a call
    assert reader.feed("box>") == [" <toolbox>"]
    assert reader.feed(' <tool_call>{"name": "get_time", "arguments": {}}') == []
    assert reader.feed("</tool_call>") == [ParsedToolCall("get_time", "{}")]
