"""Whether a tokenizer's chat template can render tool-calling conversations.

Many templates (the packaged SmolLM2's among them) ignore `tools` and `tool_calls`, or raise on a
`tool` message: training on their render would silently drop the calls. A probe conversation with
one tool, one call and one result is rendered; the template supports tools when the tool's
description, the call's argument and the result all appear in the text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lorasp_core.data.tool_calls import tool_call

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TOOLS_UNSUPPORTED = "the model's chat template does not support tool calls"

_PROBE_DESCRIPTION = "lorasp-probe-description-4417"
_PROBE_ARGUMENT = "lorasp-probe-argument-8123"
_PROBE_RESULT = "lorasp-probe-result-2906"
_PROBE_TOOLS: list[dict[Any, Any] | Callable[..., Any]] = [
    {
        "type": "function",
        "function": {
            "name": "lorasp_probe",
            "description": _PROBE_DESCRIPTION,
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]
_PROBE_MESSAGES: list[dict[str, Any]] = [
    {"role": "user", "content": "Look it up."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [tool_call("call_0", "lorasp_probe", {"query": _PROBE_ARGUMENT})],
    },
    {"role": "tool", "tool_call_id": "call_0", "name": "lorasp_probe", "content": _PROBE_RESULT},
    {"role": "assistant", "content": "Found it."},
]


# Renders (messages, tools) to text with some chat template.
ToolRender = Callable[[list[dict[str, Any]], list[dict[str, Any]]], object]


def tool_support_problem(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """None when the template renders tools, calls and results; otherwise why not (starting with
    TOOLS_UNSUPPORTED, so the message says what is wrong wherever it surfaces)."""
    if getattr(tokenizer, "chat_template", None) is None:
        return f"{TOOLS_UNSUPPORTED}: the tokenizer has no chat template"
    return template_tool_problem(
        lambda messages, tools: tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)  # type: ignore[arg-type]
    )


def template_tool_problem(render: ToolRender) -> str | None:
    """`tool_support_problem` for any way of rendering a template (serving renders in its sandbox)."""
    try:
        rendered = render(_PROBE_MESSAGES, _PROBE_TOOLS)  # type: ignore[arg-type]
    except Exception as error:  # noqa: BLE001 - a template may raise anything (jinja's raise_exception)
        return f"{TOOLS_UNSUPPORTED}: rendering a tool conversation raised {type(error).__name__}: {error}"
    if not isinstance(rendered, str):
        return f"{TOOLS_UNSUPPORTED}: the template did not render text"
    missing = [
        what
        for what, marker in (
            ("the tool definitions", _PROBE_DESCRIPTION),
            ("the assistant's tool calls", _PROBE_ARGUMENT),
            ("the tool results", _PROBE_RESULT),
        )
        if marker not in rendered
    ]
    if missing:
        return f"{TOOLS_UNSUPPORTED}: it does not render {', '.join(missing)}"
    return None
