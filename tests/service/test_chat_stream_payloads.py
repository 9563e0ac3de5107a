"""The SSE payloads of a streamed chat answer with tools: each call its own `tool_calls` index, however
the engine's chunks split the text (OpenAI clients merge deltas by index)."""

from __future__ import annotations

import json
from typing import Any

from api.services.completions import ToolReading, _ChatPayloads
from lorasp_core.serving import GenerationChunk


def _call(name: str) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": {"x": 1}}) + "</tool_call>"


def _stream(pieces: list[str]) -> list[dict[str, Any]]:
    payloads = _ChatPayloads({"id": "chatcmpl-1"}, ToolReading({"f", "g", "h"}, False), False)
    deltas = []
    for i, piece in enumerate(pieces):
        finish = "stop" if i == len(pieces) - 1 else None
        chunk = GenerationChunk(text_delta=piece, token_count=i + 1, finish_reason=finish, prompt_tokens=3)
        deltas += [(p["choices"][0]["delta"], p["choices"][0]["finish_reason"]) for p in payloads(chunk)]
    return [{"delta": d, "finish": f} for d, f in deltas]


def _indexed_calls(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(c["index"], c["function"]["name"]) for e in events for c in e["delta"].get("tool_calls", [])]


def test_two_calls_closed_by_one_chunk_get_their_own_indexes() -> None:
    events = _stream([_call("f") + "\n" + _call("g"), ""])
    assert _indexed_calls(events) == [(0, "f"), (1, "g")]
    assert events[-1]["finish"] == "tool_calls"


def test_indexes_count_on_across_chunks_whatever_the_split() -> None:
    text = _call("f") + _call("g") + "\n" + _call("h")
    for cut in range(1, len(text), 7):
        events = _stream([text[:cut], text[cut:]])
        assert _indexed_calls(events) == [(0, "f"), (1, "g"), (2, "h")], cut
