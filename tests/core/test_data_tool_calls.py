"""Tool-calling chat lines: OpenAI's shapes checked with line and field, legacy functions converted,
rendered by the template's own tool support, loss on the assistant's calls and replies only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorasp_core.data import (
    IGNORE_INDEX,
    TOOLS_UNSUPPORTED,
    ChatExample,
    DatasetProblem,
    parse_messages,
    render_chat,
    tokenize_example,
    tool_support_problem,
    validate_dataset,
)
from lorasp_core.models import make_tiny_tokenizer, make_tiny_tool_tokenizer

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def call(call_id: str, city: str) -> dict[str, Any]:
    arguments = json.dumps({"city": city})
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


def tool_line() -> dict[str, Any]:
    """Two parallel calls, their two results, then the reply."""
    return {
        "messages": [
            {"role": "system", "content": "You answer weather questions."},
            {"role": "user", "content": "Paris or Rome, which is warmer?"},
            {"role": "assistant", "content": None, "tool_calls": [call("c1", "Paris"), call("c2", "Rome")]},
            {"role": "tool", "tool_call_id": "c1", "content": "PARIS-RESULT 12C"},
            {"role": "tool", "tool_call_id": "c2", "content": "ROME-RESULT 19C"},
            {"role": "assistant", "content": "Rome is warmer."},
        ],
        "tools": [WEATHER_TOOL],
        "parallel_tool_calls": True,
    }


def parsed(obj: dict[str, Any]) -> ChatExample:
    result = parse_messages(obj, 1)
    assert isinstance(result, ChatExample), result
    return result


def problems(obj: dict[str, Any], line: int = 4) -> dict[str | None, str]:
    result = parse_messages(obj, line)
    assert isinstance(result, list), result
    assert all(isinstance(problem, DatasetProblem) and problem.line == line for problem in result)
    return {problem.field: problem.reason for problem in result}


def test_tool_line_parses_into_the_transformers_shape() -> None:
    example = parsed(tool_line())
    assert example.uses_tools and example.tools == (WEATHER_TOOL,)
    calls = example.messages[2]["tool_calls"]
    # arguments become dicts: templates render them with `| tojson`
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert example.messages[2]["content"] is None
    assert example.messages[3] == {
        "role": "tool",
        "tool_call_id": "c1",
        "name": "get_weather",
        "content": "PARIS-RESULT 12C",
    }


def test_legacy_functions_convert_to_tools_and_tool_calls() -> None:
    legacy = {
        "functions": [WEATHER_TOOL["function"]],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"role": "function", "name": "get_weather", "content": "12C"},
            {"role": "assistant", "content": "12 degrees."},
        ],
    }
    example = parsed(legacy)
    modern = parsed(
        {
            "tools": [WEATHER_TOOL],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "tool_calls": [call("call_1", "Paris")]},
                {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
                {"role": "assistant", "content": "12 degrees."},
            ],
        }
    )
    assert example == modern


def test_every_shape_problem_is_reported_with_its_field() -> None:
    bad_tools = [
        {"type": "retrieval", "function": {"name": "search"}},
        {"type": "function", "function": {"name": "has space", "parameters": "{}"}},
        WEATHER_TOOL,
    ]
    line = {
        "tools": bad_tools,
        "parallel_tool_calls": "yes",
        "messages": [
            {"role": "user", "content": "Go"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "c2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{oops"},
                    },
                    {"id": "c3", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}},
                    {"id": "c4", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
                    {"id": "c5", "type": "function", "function": {"name": "get_weather", "arguments": "[1]"}},
                ],
            },
            {"role": "tool", "tool_call_id": "c9", "content": "?"},
            {"role": "tool", "tool_call_id": "c3", "content": "first answer"},
            {"role": "tool", "tool_call_id": "c3", "content": "second answer"},
            {"role": "function", "name": "nothing_called", "content": "x"},
            {"role": "assistant", "content": "done", "weight": 0.5},
        ],
    }
    assert problems(line) == {
        "tools[0].type": "must be 'function', got 'retrieval'",
        "tools[1].function.name": "'has space' must match [a-zA-Z0-9_-]{1,64}",
        "tools[1].function.parameters": "must be an object, got string",
        "parallel_tool_calls": "must be a boolean, got string",
        "messages[1].tool_calls[0].id": "missing",
        "messages[1].tool_calls[1].function.arguments": "is not valid JSON",
        "messages[1].tool_calls[2].function.name": "calls 'lookup', which is not among the tools",
        "messages[1].tool_calls[3].type": "missing",
        "messages[1].tool_calls[3].function.arguments": "must be a JSON string, got object",
        "messages[1].tool_calls[4].function.arguments": "must encode a JSON object, got array",
        "messages[2].tool_call_id": "tool call 'c9' was not issued earlier in the conversation",
        "messages[4].tool_call_id": "tool call 'c3' was already answered",
        "messages[5].name": "answers no earlier, unanswered function_call of 'nothing_called'",
        "messages[6].weight": "must be 0 or 1, got number 0.5",
    }


def test_tool_results_may_not_precede_their_call_and_parallel_false_is_enforced() -> None:
    line = tool_line()
    line["parallel_tool_calls"] = False
    found = problems(line)
    assert found == {"messages[2].tool_calls": "2 calls in one turn, but parallel_tool_calls is false"}
    early = tool_line()
    early["messages"].insert(1, {"role": "tool", "tool_call_id": "c1", "content": "too early"})
    assert problems(early)["messages[1].tool_call_id"].endswith("was not issued earlier in the conversation")


def test_a_prefixed_conversation_names_its_fields_under_the_prefix() -> None:
    line = tool_line()
    line["messages"][2]["tool_calls"][0]["type"] = "fn"
    result = parse_messages(line, 9, "input.")
    assert isinstance(result, list)
    assert [(p.line, p.field) for p in result] == [(9, "input.messages[2].tool_calls[0].type")]


def test_loss_covers_the_calls_and_the_reply_but_not_the_tool_results() -> None:
    tokenizer = make_tiny_tool_tokenizer()
    example = parsed(tool_line())
    tokenized = tokenize_example(example, tokenizer, max_length=100_000)
    rendered = render_chat(tokenizer, example.messages, tools=example.tools)
    assert tokenizer.decode(tokenized.input_ids) == rendered
    trained = [
        token if label != IGNORE_INDEX else None
        for token, label in zip(tokenized.input_ids, tokenized.labels, strict=True)
    ]
    runs, current = [], []
    for token in trained + [None]:
        if token is None:
            if current:
                runs.append(tokenizer.decode(current))
            current = []
        else:
            current.append(token)
    paris = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    rome = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    assert runs == [f"{paris}\n{rome}<|im_end|>", "Rome is warmer.<|im_end|>"]
    assert "RESULT" not in "".join(runs) and "<tools>" in rendered and "PARIS-RESULT" in rendered


def test_templates_without_tool_support_are_detected() -> None:
    assert tool_support_problem(make_tiny_tool_tokenizer()) is None
    chatml = tool_support_problem(make_tiny_tokenizer())
    assert chatml is not None and chatml.startswith(TOOLS_UNSUPPORTED)
    ignoring = make_tiny_tokenizer()  # renders tool turns as text but never shows tools or calls
    ignoring.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] or '' }}<|im_end|>\n{% endfor %}"
    )
    reason = tool_support_problem(ignoring)
    assert (
        reason == f"{TOOLS_UNSUPPORTED}: it does not render the tool definitions, the assistant's tool calls"
    )


def test_validation_refuses_tool_files_for_a_template_without_tools(tmp_path: Path) -> None:
    path = tmp_path / "tools.jsonl"
    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    path.write_text("\n".join(json.dumps(row) for row in [plain, tool_line(), tool_line()]) + "\n")
    supported = validate_dataset(path, tokenizer=make_tiny_tool_tokenizer())
    assert supported.ok and supported.tool_examples == 2 and supported.to_dict()["tool_examples"] == 2
    refused = validate_dataset(path, tokenizer=make_tiny_tokenizer())
    assert [(p.line, p.reason.startswith(TOOLS_UNSUPPORTED)) for p in refused.problems] == [(0, True)]
    assert "first on line 2" in refused.problems[0].reason
    structural = validate_dataset(path)  # no tokenizer (the upload): the shapes only, and the count
    assert structural.ok and structural.tool_examples == 2
