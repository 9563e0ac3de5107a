"""OpenAI's request features through the official `openai` client: n, logprobs, penalties,
response_format (json_object / json_schema) and tools, on the random tiny Llama."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
import torch
from fastapi.testclient import TestClient
from serving_api_helpers import LLAMA, chat_ids, prompt_ids, register_adapter
from sqlalchemy.orm import Session

from api.main import create_app
from lorasp_core.adapters import apply_lorasp, save_adapter
from lorasp_core.config import LoraSPConfig
from lorasp_core.models import make_tiny_tool_tokenizer, tiny_random_llama
from lorasp_service.settings import Settings

MESSAGES: list[Any] = [{"role": "user", "content": "Describe a city as JSON"}]
CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "size": {"enum": ["small", "medium", "large"]},
        "capital": {"type": "boolean"},
        "districts": {"type": "integer", "minimum": 1, "maximum": 99},
    },
    "required": ["name", "size", "capital", "districts"],
    "additionalProperties": False,
}
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS}},
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "additionalProperties": False}},
    },
]


@pytest.fixture(scope="module")
def features_client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as client:
        yield client


@pytest.fixture()
def client_for(features_client: TestClient, alice: dict[str, str]) -> openai.OpenAI:
    key = alice["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(
        api_key=key, base_url="http://testserver/v1", http_client=features_client, max_retries=0
    )


@pytest.fixture(scope="module")
def tool_adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA-SP adapter whose chat template renders tools (the base tiny template does not)."""
    directory = tmp_path_factory.mktemp("tool_adapter") / "tools"
    model = apply_lorasp(tiny_random_llama(seed=0), LoraSPConfig(r=4, alpha=8.0))
    template = make_tiny_tool_tokenizer().chat_template
    save_adapter(
        model, directory, base_model_name_or_path=LLAMA, task_type="causal-lm", chat_template=template
    )
    return directory


def _schema_format(strict: bool = True) -> Any:
    return {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": strict}}


def test_json_schema_answers_parse_and_validate_for_every_choice(client_for: openai.OpenAI) -> None:
    completion = client_for.chat.completions.create(
        model=LLAMA,
        messages=MESSAGES,
        response_format=_schema_format(),
        n=4,
        temperature=1.0,
        seed=3,
        max_tokens=200,
    )
    assert len(completion.choices) == 4
    for choice in completion.choices:
        assert choice.finish_reason == "stop"
        assert choice.message.content is not None
        jsonschema.validate(json.loads(choice.message.content), CITY_SCHEMA)
    streamed = client_for.chat.completions.create(
        model=LLAMA,
        messages=MESSAGES,
        response_format=_schema_format(),
        max_tokens=200,
        stream=True,
        temperature=1.0,
        seed=4,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    jsonschema.validate(json.loads(text), CITY_SCHEMA)


def test_json_object_answers_are_objects(client_for: openai.OpenAI) -> None:
    completion = client_for.chat.completions.create(
        model=LLAMA, messages=MESSAGES, response_format={"type": "json_object"}, max_tokens=300, temperature=0
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content or ""), dict)


def test_n_choices_differ_and_a_seed_repeats_them(client_for: openai.OpenAI) -> None:
    def texts() -> list[str]:
        completion = client_for.chat.completions.create(
            model=LLAMA, messages=MESSAGES, n=3, temperature=1.0, seed=11, max_tokens=8
        )
        assert [choice.index for choice in completion.choices] == [0, 1, 2]
        assert completion.usage is not None and completion.usage.completion_tokens >= 3  # all choices count
        return [choice.message.content or "" for choice in completion.choices]

    first = texts()
    assert len(set(first)) == 3
    assert texts() == first
    streamed = client_for.chat.completions.create(
        model=LLAMA, messages=MESSAGES, n=3, temperature=1.0, seed=11, max_tokens=8, stream=True
    )
    by_index: dict[int, str] = {0: "", 1: "", 2: ""}
    for chunk in streamed:
        for choice in chunk.choices:
            by_index[choice.index] += choice.delta.content or ""
    assert [by_index[i] for i in range(3)] == first


def _token_id(token: str, raw: list[int] | None) -> int:
    """The tiny tokenizer's id of a reported token: byte b is id b + 5, specials by their text."""
    assert raw is not None
    if len(raw) == 1:
        return raw[0] + 5
    token_id = make_tiny_tool_tokenizer().convert_tokens_to_ids(token)
    assert isinstance(token_id, int)
    return token_id


@torch.inference_mode()
def _reference_logprobs(
    ids: list[int], generated: list[int], *, presence: float = 0.0, frequency: float = 0.0
) -> list[torch.Tensor]:
    """Log-softmax of the penalised logits at each generated position, from one full forward."""
    model = tiny_random_llama(seed=0)
    logits = model(input_ids=torch.tensor([ids + generated])).logits[0]
    out: list[torch.Tensor] = []
    counts = torch.zeros(logits.shape[-1])
    for step, token in enumerate(generated):
        scores = logits[len(ids) + step - 1] - counts * frequency - (counts > 0).float() * presence
        out.append(torch.log_softmax(scores, dim=-1))
        counts[token] += 1
    return out


def test_chat_logprobs_have_openai_shape_and_match_a_direct_forward(client_for: openai.OpenAI) -> None:
    completion = client_for.chat.completions.create(
        model=LLAMA, messages=MESSAGES, logprobs=True, top_logprobs=3, max_tokens=6, temperature=0
    )
    (choice,) = completion.choices
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert completion.usage is not None and len(entries) == completion.usage.completion_tokens
    reference = _reference_logprobs(chat_ids(MESSAGES), [_token_id(e.token, e.bytes) for e in entries])
    for entry, expected in zip(entries, reference, strict=True):
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-5)  # greedy: the top one
        assert entry.logprob == pytest.approx(float(expected.max()), abs=1e-4)
        best = torch.topk(expected, 3).values.tolist()
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(best, abs=1e-4)


def test_completion_logprobs_have_the_legacy_shape(client_for: openai.OpenAI) -> None:
    prompt = "The city is"
    completion = client_for.completions.create(
        model=LLAMA, prompt=prompt, logprobs=2, max_tokens=5, temperature=0
    )
    (choice,) = completion.choices
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens is not None and logprobs.text_offset is not None
    assert logprobs.token_logprobs is not None and logprobs.top_logprobs is not None
    assert completion.usage is not None
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == completion.usage.completion_tokens
    assert len(logprobs.top_logprobs) == len(logprobs.text_offset) == len(logprobs.tokens)
    assert all(1 <= len(top) <= 2 for top in logprobs.top_logprobs)
    offsets = [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))]
    assert logprobs.text_offset == offsets
    generated = _greedy_ids(prompt_ids(prompt), len(logprobs.tokens))
    reference = _reference_logprobs(prompt_ids(prompt), generated)
    assert logprobs.token_logprobs == pytest.approx([float(r.max()) for r in reference], abs=1e-4)


@torch.inference_mode()
def _greedy_ids(ids: list[int], steps: int) -> list[int]:
    model = tiny_random_llama(seed=0)
    generated: list[int] = []
    for _ in range(steps):
        generated.append(int(model(input_ids=torch.tensor([ids + generated])).logits[0, -1].argmax()))
    return generated


def test_penalties_follow_openais_formula(client_for: openai.OpenAI) -> None:
    """Under penalties the reported logprobs are those of the penalised logits the row picked from."""
    plain = client_for.chat.completions.create(
        model=LLAMA, messages=MESSAGES, max_tokens=24, temperature=0, logprobs=True
    )
    penalised = client_for.chat.completions.create(
        model=LLAMA,
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        logprobs=True,
        presence_penalty=1.5,
        frequency_penalty=2.0,
    )
    entries = penalised.choices[0].logprobs.content  # type: ignore[union-attr]
    assert entries is not None
    generated = [_token_id(e.token, e.bytes) for e in entries]
    reference = _reference_logprobs(chat_ids(MESSAGES), generated, presence=1.5, frequency=2.0)
    for token, entry, expected in zip(generated, entries, reference, strict=True):
        assert int(expected.argmax()) == token  # greedy over the penalised logits
        assert entry.logprob == pytest.approx(float(expected[token]), abs=1e-4)
    plain_ids = [_token_id(e.token, e.bytes) for e in plain.choices[0].logprobs.content or []]  # type: ignore[union-attr]
    assert len(set(plain_ids)) < len(plain_ids)  # the random model repeats itself unpenalised...
    assert plain_ids != generated  # ...and the penalties change its answer


@pytest.fixture()
def tool_model(db: Session, api_settings: Settings, alice: dict[str, str], tool_adapter_dir: Path) -> str:
    return register_adapter(db, api_settings, alice["X-Tenant-Id"], tool_adapter_dir)


def _check_call(call: Any, name: str | None = None) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    assert name is None or call.function.name == name
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        jsonschema.validate(arguments, WEATHER_PARAMETERS)
    else:
        assert call.function.name == "get_time" and isinstance(arguments, dict)


def test_required_and_named_tool_choice_come_back_as_tool_calls(
    client_for: openai.OpenAI, tool_model: str
) -> None:
    required = client_for.chat.completions.create(
        model=tool_model,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=120,
        temperature=0,
    )
    (choice,) = required.choices
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        _check_call(call)
    named = client_for.chat.completions.create(
        model=tool_model,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=120,
        temperature=1.0,
        seed=5,
        n=2,
    )
    for choice in named.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        (call,) = choice.message.tool_calls
        _check_call(call, "get_weather")
    streamed = client_for.chat.completions.create(
        model=tool_model,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=120,
        stream=True,
        temperature=1.0,
        seed=8,
    )
    chunks = [chunk for chunk in streamed if chunk.choices]
    calls = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or []]
    assert calls and chunks[-1].choices[0].finish_reason == "tool_calls"
    _check_call(calls[0])


def _streamed_answer(client: openai.OpenAI, **request: Any) -> tuple[str | None, list[tuple[str, str]], str]:
    """(content, [(name, arguments)], finish_reason) added up from a streamed answer."""
    content, calls, finish = "", [], ""
    for chunk in client.chat.completions.create(stream=True, **request):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                assert call.index == len(calls) and call.id and call.function
                calls.append((call.function.name, call.function.arguments))
            finish = choice.finish_reason or finish
    return content or None, calls, finish


@pytest.mark.parametrize("tool_choice", ["required", "auto"])
def test_a_streamed_tool_answer_adds_up_to_the_whole_answer(
    client_for: openai.OpenAI, tool_model: str, tool_choice: str
) -> None:
    request: dict[str, Any] = {
        "model": tool_model,
        "messages": MESSAGES,
        "tools": TOOLS,
        "tool_choice": tool_choice,
        "max_tokens": 120,
        "temperature": 1.0,
        "seed": 11,
    }
    whole = client_for.chat.completions.create(**request).choices[0]
    calls = [(c.function.name, c.function.arguments) for c in whole.message.tool_calls or []]
    assert _streamed_answer(client_for, **request) == (whole.message.content, calls, whole.finish_reason)
    if tool_choice == "required":
        assert calls and whole.finish_reason == "tool_calls"


def test_parallel_tool_calls_false_gives_one_call_per_choice(
    client_for: openai.OpenAI, tool_model: str
) -> None:
    answer = client_for.chat.completions.create(
        model=tool_model,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=160,
        temperature=1.0,
        seed=3,
        n=3,
    )
    for choice in answer.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        (call,) = choice.message.tool_calls  # the grammar allows exactly one call
        _check_call(call)


def test_a_conversation_with_tool_turns_is_rendered(client_for: openai.OpenAI, tool_model: str) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    messages: list[Any] = [
        {"role": "user", "content": "What time is it?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
    ]
    completion = client_for.chat.completions.create(
        model=tool_model, messages=messages, tools=TOOLS, max_tokens=4, temperature=0
    )
    assert completion.usage is not None and completion.usage.prompt_tokens > len(chat_ids(MESSAGES))
    assert completion.choices[0].finish_reason in {"stop", "length", "tool_calls"}


def test_tools_on_a_template_without_tool_support_are_a_400(client_for: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client_for.chat.completions.create(model=LLAMA, messages=MESSAGES, tools=TOOLS, max_tokens=4)
    assert refused.value.code == "unsupported_tool_calls" and refused.value.param == "tools"
    # tool_choice "none": the tools stay out of the prompt, so any template serves the request
    fine = client_for.chat.completions.create(
        model=LLAMA, messages=MESSAGES, tools=TOOLS, tool_choice="none", max_tokens=4
    )
    assert fine.choices[0].message.tool_calls is None


BAD_CHAT_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"n": 0}, "n"),
    ({"n": 9}, "n"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -2.1}, "frequency_penalty"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name"),
    ({"tools": TOOLS, "parallel_tool_calls": "no"}, "parallel_tool_calls"),
]


@pytest.mark.parametrize(("extra", "param"), BAD_CHAT_BODIES)
def test_bad_feature_values_are_400s_naming_the_field(
    client_for: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client_for.chat.completions.create(model=LLAMA, messages=MESSAGES, max_tokens=4, extra_body=extra)
    assert refused.value.param is not None and refused.value.param.startswith(param)


def test_an_unsupported_schema_is_a_400_naming_response_format(client_for: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "format": "no-such-format"}}}
    with pytest.raises(openai.BadRequestError) as refused:
        client_for.chat.completions.create(
            model=LLAMA,
            messages=MESSAGES,
            max_tokens=4,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": schema, "strict": True},
            },
        )
    assert refused.value.param == "response_format" and refused.value.code == "unsupported_schema"
    with pytest.raises(openai.BadRequestError):
        client_for.completions.create(model=LLAMA, prompt="x", max_tokens=2, logprobs=6)
