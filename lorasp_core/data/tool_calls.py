"""Shape checks for tool definitions and assistant tool calls, as OpenAI's fine-tuning format documents.

Each check appends every problem it finds (with its field path) and returns the template-ready value,
or None when the value is unusable. Template-ready follows transformers' convention: a tool call is
`{"id", "type": "function", "function": {"name", "arguments": <dict>}}` — the JSON string OpenAI files
carry is parsed to a dict, because chat templates (Qwen2.5, Llama 3.1, Hermes) render `arguments | tojson`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from lorasp_core.data.formats import DatasetProblem
from lorasp_core.data.json_values import json_type_name

FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
FUNCTION_NAME_RULE = "must match [a-zA-Z0-9_-]{1,64}"


def _object(value: object, path: str, line: int, problems: list[DatasetProblem]) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        problems.append(DatasetProblem(line, f"must be an object, got {json_type_name(value)}", path))
        return None
    return value


def _function_name(
    function: dict[str, Any], path: str, line: int, problems: list[DatasetProblem]
) -> str | None:
    if "name" not in function:
        problems.append(DatasetProblem(line, "missing", f"{path}.name"))
        return None
    name = function["name"]
    if not isinstance(name, str):
        problems.append(DatasetProblem(line, f"must be a string, got {json_type_name(name)}", f"{path}.name"))
        return None
    if not FUNCTION_NAME.fullmatch(name):
        problems.append(DatasetProblem(line, f"{name[:80]!r} {FUNCTION_NAME_RULE}", f"{path}.name"))
        return None
    return name


def check_function_definition(
    value: object, path: str, line: int, problems: list[DatasetProblem]
) -> dict[str, Any] | None:
    """A function definition {name, description?, parameters?} (the `function` of a tool, or a legacy
    `functions[i]`)."""
    function = _object(value, path, line, problems)
    if function is None:
        return None
    before = len(problems)
    name = _function_name(function, path, line, problems)
    if "description" in function and not isinstance(function["description"], str):
        kind = json_type_name(function["description"])
        problems.append(DatasetProblem(line, f"must be a string, got {kind}", f"{path}.description"))
    if "parameters" in function and not isinstance(function["parameters"], dict):
        kind = json_type_name(function["parameters"])
        problems.append(DatasetProblem(line, f"must be an object, got {kind}", f"{path}.parameters"))
    if name is None or len(problems) > before:
        return None
    return function


def check_tool(value: object, path: str, line: int, problems: list[DatasetProblem]) -> dict[str, Any] | None:
    """One `tools[i]`: {"type": "function", "function": {...}}."""
    tool = _object(value, path, line, problems)
    if tool is None:
        return None
    type_ok = tool.get("type") == "function"
    if not type_ok:
        shown = "missing" if "type" not in tool else f"must be 'function', got {tool['type']!r}"
        problems.append(DatasetProblem(line, shown, f"{path}.type"))
    if "function" not in tool:
        problems.append(DatasetProblem(line, "missing", f"{path}.function"))
        return None
    function = check_function_definition(tool["function"], f"{path}.function", line, problems)
    if function is None or not type_ok:
        return None
    return {"type": "function", "function": function}


def check_arguments(
    value: object, path: str, line: int, problems: list[DatasetProblem]
) -> dict[str, Any] | None:
    """`function.arguments`: a JSON string holding an object; returned parsed (for the template)."""
    if not isinstance(value, str):
        problems.append(DatasetProblem(line, f"must be a JSON string, got {json_type_name(value)}", path))
        return None
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        problems.append(DatasetProblem(line, "is not valid JSON", path))
        return None
    if not isinstance(parsed, dict):
        problems.append(
            DatasetProblem(line, f"must encode a JSON object, got {json_type_name(parsed)}", path)
        )
        return None
    return parsed


def check_function_call(
    value: object, path: str, line: int, problems: list[DatasetProblem]
) -> tuple[str, dict[str, Any]] | None:
    """{"name", "arguments"}: a tool call's `function`, or a legacy assistant `function_call`."""
    function = _object(value, path, line, problems)
    if function is None:
        return None
    name = _function_name(function, path, line, problems)
    arguments = None
    if "arguments" not in function:
        problems.append(DatasetProblem(line, "missing", f"{path}.arguments"))
    else:
        arguments = check_arguments(function["arguments"], f"{path}.arguments", line, problems)
    if name is None or arguments is None:
        return None
    return name, arguments


def check_tool_call(
    value: object, path: str, line: int, problems: list[DatasetProblem]
) -> dict[str, Any] | None:
    """One `tool_calls[j]`: {"id", "type": "function", "function": {"name", "arguments"}}."""
    call = _object(value, path, line, problems)
    if call is None:
        return None
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        reason = (
            "missing" if "id" not in call else f"must be a non-empty string, got {json_type_name(call_id)}"
        )
        problems.append(DatasetProblem(line, reason, f"{path}.id"))
    if call.get("type") != "function":
        reason = "missing" if "type" not in call else f"must be 'function', got {call['type']!r}"
        problems.append(DatasetProblem(line, reason, f"{path}.type"))
    if "function" not in call:
        problems.append(DatasetProblem(line, "missing", f"{path}.function"))
        return None
    function = check_function_call(call["function"], f"{path}.function", line, problems)
    if function is None or not isinstance(call_id, str) or not call_id or call.get("type") != "function":
        return None
    return tool_call(call_id, *function)


def tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The template-ready tool call (transformers' convention: arguments as a dict)."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
