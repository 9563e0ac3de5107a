"""Preference (DPO) data, OpenAI's format: parse and check one line, tokenize one pair.

A line is `{"input": {"messages": [...], "tools": [...]}, "preferred_output": [assistant message],
"non_preferred_output": [assistant message]}`. `input.messages` obeys the chat rules (parse_chat's own
checks) except that it has no assistant answer yet: it must not end with an assistant message.
`input.tools` is kept as given and handed to the chat template.

A pair tokenizes as TRL does it: the prompt is the template's render of `input` with the generation
prompt; each response is the render of `input` + output with the prompt cut off (the assistant content
and its end-of-turn marker), tokenized on its own, so both sequences share the prompt's exact tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from lorasp_core.data.chat_messages import parse_messages
from lorasp_core.data.fields import parse_chat
from lorasp_core.data.formats import CHAT_ROLES, ChatExample, DatasetProblem, PreferenceExample
from lorasp_core.data.json_values import json_type_name
from lorasp_core.data.tokenization import IGNORE_INDEX, TokenizedExample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

OUTPUT_KEYS = ("preferred_output", "non_preferred_output")


def _moved(problems: list[DatasetProblem], old_prefix: str, new_prefix: str) -> list[DatasetProblem]:
    """parse_chat names fields `messages[...]`; here they live under another key."""
    return [
        replace(p, field=new_prefix + p.field[len(old_prefix) :])
        if p.field is not None and p.field.startswith(old_prefix)
        else p
        for p in problems
    ]


def _parse_input(value: object, line: int) -> tuple[tuple[dict[str, str], ...], Any] | list[DatasetProblem]:
    if not isinstance(value, dict):
        return [DatasetProblem(line, f"must be an object, got {json_type_name(value)}", "input")]
    if "messages" not in value:
        return [DatasetProblem(line, "missing", "input.messages")]
    # the chat rules, tools included, without chat's "needs an assistant message" (this is a prompt)
    parsed = parse_messages(value, line, "input.", require_assistant=False)
    if isinstance(parsed, list):
        return parsed
    prompt = parsed.messages
    if prompt[-1]["role"] == "assistant":
        reason = "the input must not end with an assistant message (the outputs are the answer)"
        return [DatasetProblem(line, reason, f"input.messages[{len(prompt) - 1}]")]
    return prompt, (list(parsed.tools) if parsed.tools else None)


def _parse_output(obj: dict[str, Any], key: str, line: int) -> dict[str, str] | list[DatasetProblem]:
    if key not in obj:
        return [DatasetProblem(line, "missing", key)]
    output = obj[key]
    if not isinstance(output, list):
        return [DatasetProblem(line, f"must be a list of one message, got {json_type_name(output)}", key)]
    if len(output) != 1:
        return [DatasetProblem(line, f"must hold exactly one assistant message, got {len(output)}", key)]
    role = output[0].get("role") if isinstance(output[0], dict) else None
    if isinstance(role, str) and role in CHAT_ROLES and role != "assistant":
        # checked first: parse_chat would only say "no assistant message"
        return [DatasetProblem(line, f"role must be 'assistant', got {role!r}", f"{key}[0].role")]
    parsed = parse_chat({"messages": output}, line)
    if isinstance(parsed, list):
        return _moved(parsed, "messages", key)
    assert isinstance(parsed, ChatExample)
    return parsed.messages[0]


def parse_preference(obj: dict[str, Any], line: int) -> PreferenceExample | list[DatasetProblem]:
    """One preference line, or every problem found in it (each naming its field)."""
    problems: list[DatasetProblem] = []
    if "input" not in obj:
        problems.append(DatasetProblem(line, "missing", "input"))
        prompt_and_tools = None
    else:
        parsed_input = _parse_input(obj["input"], line)
        prompt_and_tools = None if isinstance(parsed_input, list) else parsed_input
        problems.extend(parsed_input if isinstance(parsed_input, list) else [])
    outputs: list[dict[str, str]] = []
    for key in OUTPUT_KEYS:
        parsed_output = _parse_output(obj, key, line)
        if isinstance(parsed_output, list):
            problems.extend(parsed_output)
        else:
            outputs.append(parsed_output)
    if problems or prompt_and_tools is None:
        return problems
    prompt, tools = prompt_and_tools
    return PreferenceExample(prompt=prompt, chosen=outputs[0], rejected=outputs[1], tools=tools)


# --- tokenization ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizedPair:
    """The chosen and the rejected sequence of one pair; labels cover the response tokens only."""

    chosen: TokenizedExample
    rejected: TokenizedExample

    @property
    def length(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


def _render(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, str]],
    tools: Any,
    *,
    add_generation_prompt: bool,
) -> str:
    rendered = tokenizer.apply_chat_template(
        list(messages), tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(rendered, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(rendered).__name__}, not str")
    return rendered


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # the template writes the special tokens itself, as in chat tokenization
    return cast(list[int], tokenizer(text, add_special_tokens=False)["input_ids"])


def pair_token_ids(
    example: PreferenceExample, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, chosen response ids, rejected response ids), untruncated."""
    prompt_text = _render(tokenizer, example.prompt, example.tools, add_generation_prompt=True)
    responses: list[list[int]] = []
    for output in (example.chosen, example.rejected):
        full = _render(tokenizer, [*example.prompt, output], example.tools, add_generation_prompt=False)
        if not full.startswith(prompt_text):
            raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
        # the whitespace after the end-of-turn marker is formatting between turns, not part of the answer
        responses.append(_ids(tokenizer, full[len(prompt_text) :].rstrip()))
    return _ids(tokenizer, prompt_text), responses[0], responses[1]


def count_pair_tokens(example: PreferenceExample, tokenizer: PreTrainedTokenizerBase) -> int:
    """The longer of the pair's two sequences (prompt + response), untruncated."""
    prompt, chosen, rejected = pair_token_ids(example, tokenizer)
    return len(prompt) + max(len(chosen), len(rejected))


def tokenize_preference(
    example: PreferenceExample, tokenizer: PreTrainedTokenizerBase, *, max_length: int
) -> TokenizedPair:
    """Both sequences of a pair, each at most max_length tokens.

    Too long: the prompt loses tokens from its start (its end, the assistant header the answer follows,
    stays), but keeps at least half of max_length when it has them; then the responses lose their end.
    Both sequences keep the same prompt tokens, so the pair differs only in its answers.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    prompt, chosen, rejected = pair_token_ids(example, tokenizer)
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest > max_length:
        keep = max(max_length - longest, min(len(prompt), max_length // 2))
        prompt = prompt[len(prompt) - keep :]
    room = max_length - len(prompt)

    def sequence(response: list[int]) -> TokenizedExample:
        response = response[:room]
        return TokenizedExample(input_ids=prompt + response, labels=[IGNORE_INDEX] * len(prompt) + response)

    return TokenizedPair(chosen=sequence(chosen), rejected=sequence(rejected))
