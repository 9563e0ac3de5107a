"""Parse a chat conversation (`messages` plus `tools`) into a ChatExample, reporting every problem.

The same rules serve a chat line and any other format that embeds a conversation (a preference
file's `input`): `parse_messages(obj, line, path_prefix)` names fields under the prefix. Legacy
OpenAI shapes are converted on parse: `functions` -> `tools`, an assistant `function_call` -> one tool
call (id `call_<message index>`), a `function` message -> a `tool` message answering that call.
"""

from __future__ import annotations

from typing import Any

from lorasp_core.data.formats import ChatExample, DatasetProblem, UntrainedExampleProblem
from lorasp_core.data.json_values import json_type_name, string_field
from lorasp_core.data.tool_calls import (
    check_function_call,
    check_function_definition,
    check_tool,
    check_tool_call,
    tool_call,
)

INPUT_ROLES = ("system", "user", "assistant", "tool", "function")


class _Conversation:
    """State of one conversation while its messages are checked in order."""

    def __init__(self, line: int, prefix: str) -> None:
        self.line, self.prefix = line, prefix
        self.problems: list[DatasetProblem] = []
        self.tool_names: set[str] | None = None  # None: no tools given, so any called name is allowed
        self.open_calls: dict[str, str] = {}  # call id -> function name, issued and not yet answered
        self.issued: set[str] = set()
        self.parallel_tool_calls: bool | None = None

    def problem(self, reason: str, path: str) -> None:
        self.problems.append(DatasetProblem(self.line, reason, self.prefix + path))

    def parse_tools(self, obj: dict[str, Any]) -> tuple[dict[str, Any], ...] | None:
        if "tools" in obj and "functions" in obj:
            self.problem("give either tools or the legacy functions, not both", "functions")
            return None
        key = "tools" if "tools" in obj else "functions" if "functions" in obj else None
        if key is None:
            return None
        raw = obj[key]
        if not isinstance(raw, list):
            self.problem(f"must be a list, got {json_type_name(raw)}", key)
            return None
        tools: list[dict[str, Any]] = []
        for index, item in enumerate(raw):
            path = f"{self.prefix}{key}[{index}]"
            if key == "tools":
                tool = check_tool(item, path, self.line, self.problems)
            else:
                function = check_function_definition(item, path, self.line, self.problems)
                tool = None if function is None else {"type": "function", "function": function}
            if tool is not None:
                tools.append(tool)
        self.tool_names = {tool["function"]["name"] for tool in tools}
        return tuple(tools)

    def parse_weight(self, message: dict[str, Any], path: str) -> int:
        if "weight" not in message:
            return 1
        weight = message["weight"]
        # bool is an int in Python; 0.0/1.0 are not OpenAI's documented values either
        if isinstance(weight, bool) or not isinstance(weight, int) or weight not in (0, 1):
            self.problem(f"must be 0 or 1, got {json_type_name(weight)} {weight!r}", f"{path}.weight")
            return 1
        return weight

    def issue(self, call: dict[str, Any], path: str, name_path: str) -> None:
        call_id, name = call["id"], call["function"]["name"]
        if call_id in self.issued:
            self.problem(f"duplicate tool call id {call_id!r} in this conversation", f"{path}.id")
        if self.tool_names is not None and name not in self.tool_names:
            self.problem(f"calls {name!r}, which is not among the tools", name_path)
        self.issued.add(call_id)
        self.open_calls[call_id] = name

    def parse_assistant(self, message: dict[str, Any], path: str, index: int) -> dict[str, Any] | None:
        if "tool_calls" in message and "function_call" in message:
            self.problem(
                "give either tool_calls or the legacy function_call, not both", f"{path}.function_call"
            )
            return None
        if "tool_calls" not in message and "function_call" not in message:
            text = string_field(
                message,
                "content",
                f"{self.prefix}{path}.content",
                self.line,
                self.problems,
                allow_empty=False,
            )
            return None if text is None else {"role": "assistant", "content": text}
        content: str | None = None
        if message.get("content") is not None:  # a turn that calls tools may have no text
            content = string_field(
                message, "content", f"{self.prefix}{path}.content", self.line, self.problems, allow_empty=True
            )
        calls = self.parse_calls(message, path, index)
        if calls is None:
            return None
        return {"role": "assistant", "content": content, "tool_calls": calls}

    def parse_calls(self, message: dict[str, Any], path: str, index: int) -> list[dict[str, Any]] | None:
        before = len(self.problems)
        if "function_call" in message:
            checked = check_function_call(
                message["function_call"], f"{self.prefix}{path}.function_call", self.line, self.problems
            )
            if checked is None:
                return None
            legacy = tool_call(f"call_{index}", *checked)
            self.issue(legacy, f"{path}.function_call", f"{path}.function_call.name")
            return [legacy] if len(self.problems) == before else None
        raw = message["tool_calls"]
        if not isinstance(raw, list) or not raw:
            got = "an empty list" if isinstance(raw, list) else json_type_name(raw)
            self.problem(f"must be a non-empty list, got {got}", f"{path}.tool_calls")
            return None
        if self.parallel_tool_calls is False and len(raw) > 1:
            self.problem(
                f"{len(raw)} calls in one turn, but parallel_tool_calls is false", f"{path}.tool_calls"
            )
        calls: list[dict[str, Any]] = []
        for number, item in enumerate(raw):
            call_path = f"{path}.tool_calls[{number}]"
            checked_call = check_tool_call(item, self.prefix + call_path, self.line, self.problems)
            if checked_call is not None:
                self.issue(checked_call, call_path, f"{call_path}.function.name")
                calls.append(checked_call)
            elif isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
                # a malformed call still has its id: its answer is not a second, derived problem
                self.issued.add(item["id"])
                self.open_calls[item["id"]] = ""
        return calls if len(self.problems) == before else None

    def parse_result(self, message: dict[str, Any], path: str, role: str) -> dict[str, Any] | None:
        """A `tool` message (by tool_call_id) or a legacy `function` one (by name) answering an open call."""
        key = "tool_call_id" if role == "tool" else "name"
        answer = string_field(
            message, key, f"{self.prefix}{path}.{key}", self.line, self.problems, allow_empty=False
        )
        content = string_field(
            message, "content", f"{self.prefix}{path}.content", self.line, self.problems, allow_empty=True
        )
        if answer is None:
            return None
        if role == "function":  # the oldest open call of that function
            call_id = next((cid for cid, name in self.open_calls.items() if name == answer), None)
            if call_id is None:
                self.problem(f"answers no earlier, unanswered function_call of {answer!r}", f"{path}.name")
                return None
        else:
            call_id = answer
            if call_id not in self.open_calls:
                state = (
                    "was already answered"
                    if call_id in self.issued
                    else "was not issued earlier in the conversation"
                )
                self.problem(f"tool call {call_id!r} {state}", f"{path}.tool_call_id")
                return None
        name = self.open_calls.pop(call_id)
        if content is None:
            return None
        return {"role": "tool", "tool_call_id": call_id, "name": name, "content": content}


def _parse_message(
    conversation: _Conversation, message: object, index: int
) -> tuple[dict[str, Any] | None, int, str | None]:
    """(template-ready message or None, weight, role or None when the role is unreadable)."""
    path = f"messages[{index}]"
    if not isinstance(message, dict):
        conversation.problem(f"must be an object, got {json_type_name(message)}", path)
        return None, 1, None
    prefix = conversation.prefix
    role = string_field(
        message, "role", f"{prefix}{path}.role", conversation.line, conversation.problems, allow_empty=False
    )
    if role is not None and role not in INPUT_ROLES:
        conversation.problem(f"unknown role {role!r} (expected {', '.join(INPUT_ROLES)})", f"{path}.role")
        role = None
    weight = conversation.parse_weight(message, path)
    if role is None:
        return None, weight, None
    if role == "assistant":
        return conversation.parse_assistant(message, path, index), weight, role
    if role in ("tool", "function"):
        return conversation.parse_result(message, path, role), weight, "tool"
    content = string_field(
        message,
        "content",
        f"{prefix}{path}.content",
        conversation.line,
        conversation.problems,
        allow_empty=False,
    )
    # other keys ("name") are tolerated and dropped: the templates need role and content
    return (None if content is None else {"role": role, "content": content}), weight, role


def parse_messages(
    obj: dict[str, Any], line: int, path_prefix: str = "", *, require_assistant: bool = True
) -> ChatExample | list[DatasetProblem]:
    """`obj["messages"]` (+ `tools` / `functions`, `parallel_tool_calls`) as a ChatExample, or every
    problem found, each naming its field under `path_prefix` (e.g. "input.")."""
    conversation = _Conversation(line, path_prefix)
    if "parallel_tool_calls" in obj:
        flag = obj["parallel_tool_calls"]
        if isinstance(flag, bool):
            conversation.parallel_tool_calls = flag
        else:
            conversation.problem(f"must be a boolean, got {json_type_name(flag)}", "parallel_tool_calls")
    tools = conversation.parse_tools(obj)
    messages = obj.get("messages")
    if not isinstance(messages, list):
        conversation.problem(f"must be a list of messages, got {json_type_name(messages)}", "messages")
        return conversation.problems
    if not messages:
        conversation.problem("empty conversation", "messages")
        return conversation.problems
    parsed: list[dict[str, Any]] = []
    weights: list[int] = []
    roles: list[str | None] = []
    for index, message in enumerate(messages):
        template_message, weight, role = _parse_message(conversation, message, index)
        roles.append(role)
        if template_message is not None:
            parsed.append(template_message)
            weights.append(weight)
    # only claim "no assistant turn" when every role was readable, so a typo like 'bot' is not reported twice
    if require_assistant and None not in roles:
        if "assistant" not in roles:
            conversation.problem("no assistant message: nothing to train on", "messages")
        elif not conversation.problems and all(
            weight == 0
            for message, weight in zip(parsed, weights, strict=True)
            if message["role"] == "assistant"
        ):
            reason = "every assistant message has weight 0: nothing to train on"
            conversation.problems.append(UntrainedExampleProblem(line, reason, path_prefix + "messages"))
    if conversation.problems:
        return conversation.problems
    return ChatExample(
        messages=tuple(parsed),
        tools=tools,
        weights=None if all(weight == 1 for weight in weights) else tuple(weights),
        parallel_tool_calls=conversation.parallel_tool_calls,
    )
