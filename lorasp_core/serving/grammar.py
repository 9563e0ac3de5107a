"""Constrained decoding: response formats and forced tool calls as llguidance grammars.

llguidance (Rust, no dependencies, a wheel for any CPython >= 3.9) turns JSON schemas and Lark grammars
into a matcher that gives, for each step, the set of tokens that keep the output valid. A grammar is
compiled once per (tokenizer, grammar text) and kept; each decode row gets a copy of the compiled matcher
(`deep_copy`, microseconds) that follows that row's tokens.

JSON is generated compactly (`", "` and `": "` separators, no free whitespace), so even a random model
cannot loop in whitespace: every token it can pick moves the document forward.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import torch

from lorasp_core.serving.types import GrammarError, ResponseFormat, ToolChoice

# What a tool-calling template (Qwen2.5, Hermes, lorasp's tiny tool template) expects a call to look like.
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>\n", "\n</tool_call>"

_JSON_LAYOUT: dict[str, Any] = {
    "item_separator": ", ",
    "key_separator": ": ",
    "whitespace_flexible": False,
}


@dataclass(frozen=True)
class GrammarSpec:
    """A grammar in llguidance's Lark dialect (JSON-serialisable: it travels inside a DecodeRow).
    `field` is the request field it came from, named by errors."""

    lark: str
    field: str = "response_format"


def _json_rule(schema: dict[str, Any], *, lenient: bool) -> str:
    """A Lark `%json` rule for `schema` with lorasp's layout (the schema's own x-guidance is replaced)."""
    options: dict[str, Any] = {**_JSON_LAYOUT, "lenient": lenient}
    return "%json " + json.dumps({**schema, "x-guidance": options})


def response_format_grammar(response_format: ResponseFormat | None) -> GrammarSpec | None:
    """The grammar of a response format; None for free text."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return GrammarSpec("start: " + _json_rule({"type": "object"}, lenient=False))
    if response_format.schema is None:
        raise GrammarError("response_format", "json_schema needs a schema")
    # strict: every keyword must be enforced; otherwise unimplemented ones are ignored (best effort).
    return GrammarSpec("start: " + _json_rule(response_format.schema, lenient=not response_format.strict))


def tool_call_grammar(
    tools: list[dict[str, Any]], choice: ToolChoice | None, *, parallel: bool = True
) -> GrammarSpec | None:
    """For `required` (one or more calls of any tool; exactly one when not `parallel`) or a named function
    (exactly one call of it): the template's tool-call blocks, each `{"name": ..., "arguments": <its
    parameters>}`. None otherwise."""
    if choice is None or choice.mode not in ("required", "function"):
        return None
    functions = [tool["function"] for tool in tools]
    if choice.mode == "function":
        functions = [f for f in functions if f.get("name") == choice.name]
    alternatives = [
        {
            "type": "object",
            "properties": {
                "name": {"const": f["name"]},
                "arguments": f.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in functions
    ]
    schema = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    call = (
        f"call: {json.dumps(TOOL_CALL_OPEN)} {_json_rule(schema, lenient=True)} {json.dumps(TOOL_CALL_CLOSE)}"
    )
    start = "start: call" if choice.mode == "function" or not parallel else 'start: call ("\\n" call)*'
    return GrammarSpec(f"{start}\n{call}", field="tools")


class _TokenizerGrammars:
    """One tokenizer's llguidance view and its compiled grammars."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.vocab_size = vocab_size
        self.compiled: dict[str, llguidance.LLMatcher] = {}


_lock = threading.Lock()
_by_tokenizer: weakref.WeakKeyDictionary[Any, _TokenizerGrammars] = weakref.WeakKeyDictionary()
MAX_GRAMMARS_PER_TOKENIZER = 256


def _grammars(tokenizer: Any, vocab_size: int) -> _TokenizerGrammars:
    with _lock:
        found = _by_tokenizer.get(tokenizer)
        if found is None or found.vocab_size != vocab_size:
            found = _TokenizerGrammars(tokenizer, vocab_size)
            _by_tokenizer[tokenizer] = found
        return found


def token_bytes(tokenizer: Any, vocab_size: int, token_id: int) -> bytes:
    """The exact bytes a token stands for (a byte-level token may be half a UTF-8 character)."""
    return _grammars(tokenizer, vocab_size).tokenizer.decode_bytes([token_id])


def compile_grammar(tokenizer: Any, vocab_size: int, spec: GrammarSpec) -> llguidance.LLMatcher:
    """The compiled matcher for `spec` on this tokenizer (cached); raises GrammarError naming the field."""
    grammars = _grammars(tokenizer, vocab_size)
    with _lock:
        matcher = grammars.compiled.get(spec.lark)
    if matcher is not None:
        return matcher
    grammar = llguidance.LLMatcher.grammar_from_lark(spec.lark)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, grammars.tokenizer)
    if is_error:
        raise GrammarError(spec.field, f"cannot be enforced: {'; '.join(messages)}")
    matcher = llguidance.LLMatcher(grammars.tokenizer, grammar, log_level=0)
    if matcher.is_error():
        raise GrammarError(spec.field, f"cannot be enforced: {matcher.get_error()}")
    with _lock:
        if len(grammars.compiled) >= MAX_GRAMMARS_PER_TOKENIZER:
            grammars.compiled.pop(next(iter(grammars.compiled)))  # oldest first
        grammars.compiled[spec.lark] = matcher
    return matcher


class RowGrammar:
    """One row's position in its grammar: the allowed-token mask, and the tokens it consumed."""

    def __init__(self, compiled: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = compiled.deep_copy()
        self._vocab_size = vocab_size
        self._bits = torch.arange(32, dtype=torch.int32)

    def allowed(self) -> torch.Tensor:
        """A bool mask over the vocabulary: the tokens that keep the output valid."""
        words = torch.frombuffer(bytearray(self._matcher.compute_bitmask()), dtype=torch.int32)
        bits = (words.unsqueeze(-1) >> self._bits) & 1
        return bits.flatten()[: self._vocab_size].bool()

    def consume(self, token_id: int) -> None:
        if not self._matcher.consume_token(token_id):
            raise RuntimeError(f"grammar refused token {token_id}: {self._matcher.get_error()}")

    @property
    def finished(self) -> bool:
        """No token can follow (the document is complete): the row must stop."""
        return bool(self._matcher.is_stopped())
