"""Preference (DPO) files: validation with line numbers and field paths, and pair tokenization."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lorasp_core.data import (
    IGNORE_INDEX,
    DatasetFormat,
    DatasetProblem,
    PreferenceExample,
    read_examples,
    tokenize_example,
    tokenize_preference,
    validate_dataset,
)
from lorasp_core.models import make_tiny_tokenizer

TOKENIZER = make_tiny_tokenizer()


def pair_line(question: str = "2+2?", good: str = "4", bad: str = "5", **overrides: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "input": {"messages": [{"role": "user", "content": question}]},
        "preferred_output": [{"role": "assistant", "content": good}],
        "non_preferred_output": [{"role": "assistant", "content": bad}],
    }
    line.update(overrides)
    return line


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def problems_at(line: int, problems: list[DatasetProblem]) -> list[tuple[str | None, str]]:
    return [(p.field, p.reason) for p in problems if p.line == line]


def test_a_good_file_is_a_preference_dataset_with_its_tools_kept(tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "add", "parameters": {}}}]
    with_tools = pair_line()
    with_tools["input"]["tools"] = tools
    path = write_lines(tmp_path / "pref.jsonl", [pair_line(), with_tools])
    report = validate_dataset(path, tokenizer=TOKENIZER)
    assert report.ok, report.summary()
    assert report.format is DatasetFormat.PREFERENCE and report.examples == 2
    first, second = read_examples(path)
    assert isinstance(first, PreferenceExample) and isinstance(second, PreferenceExample)
    assert first.prompt == ({"role": "user", "content": "2+2?"},)
    assert first.chosen == {"role": "assistant", "content": "4"}
    assert first.rejected == {"role": "assistant", "content": "5"}
    assert first.tools is None and second.tools == tools


def test_every_problem_is_reported_with_its_line_and_field(tmp_path: Path) -> None:
    ends_with_answer = pair_line()
    ends_with_answer["input"]["messages"].append({"role": "assistant", "content": "hm"})
    bad_role = pair_line()
    bad_role["input"]["messages"][0]["role"] = "bot"
    lines = [
        pair_line(),  # 1: fine
        {"input": {"messages": [{"role": "user", "content": "q"}]}},  # 2: both outputs missing
        pair_line(preferred_output=[{"role": "assistant", "content": "a"}] * 2),  # 3: two messages
        pair_line(non_preferred_output=[{"role": "user", "content": "b"}]),  # 4: not an assistant
        ends_with_answer,  # 5
        bad_role,  # 6
        pair_line(input=[]),  # 7: input not an object
        pair_line(preferred_output=[{"role": "assistant", "content": ""}]),  # 8: empty content
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},  # 9
        pair_line(input={"messages": []}),  # 10: empty conversation
    ]
    report = validate_dataset(write_lines(tmp_path / "pref.jsonl", lines))
    assert not report.ok and report.examples == 1
    assert problems_at(1, report.problems) == []
    assert problems_at(2, report.problems) == [
        ("preferred_output", "missing"),
        ("non_preferred_output", "missing"),
    ]
    assert problems_at(3, report.problems) == [
        ("preferred_output", "must hold exactly one assistant message, got 2")
    ]
    assert problems_at(4, report.problems) == [
        ("non_preferred_output[0].role", "role must be 'assistant', got 'user'")
    ]
    ((field, reason),) = problems_at(5, report.problems)
    assert field == "input.messages[1]" and "must not end with an assistant message" in reason
    ((field, reason),) = problems_at(6, report.problems)
    assert field == "input.messages[0].role" and "unknown role 'bot'" in reason
    assert problems_at(7, report.problems) == [("input", "must be an object, got array")]
    assert problems_at(8, report.problems) == [("preferred_output[0].content", "empty content")]
    ((field, reason),) = problems_at(9, report.problems)
    assert "chat example" in reason and "preference" in reason
    assert problems_at(10, report.problems) == [("input.messages", "empty conversation")]


def test_a_pair_shares_the_prompt_and_labels_only_each_answer_and_its_end_of_turn() -> None:
    example = PreferenceExample(
        prompt=({"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}),
        chosen={"role": "assistant", "content": "four"},
        rejected={"role": "assistant", "content": "five, I think"},
    )
    pair = tokenize_preference(example, TOKENIZER, max_length=512)
    prompt_text = TOKENIZER.apply_chat_template(
        list(example.prompt), tokenize=False, add_generation_prompt=True
    )
    prompt_ids = TOKENIZER(prompt_text, add_special_tokens=False)["input_ids"]
    for sequence, answer in ((pair.chosen, "four"), (pair.rejected, "five, I think")):
        assert sequence.input_ids[: len(prompt_ids)] == prompt_ids
        assert isinstance(sequence.labels, list)
        assert sequence.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
        response = sequence.labels[len(prompt_ids) :]
        assert IGNORE_INDEX not in response
        assert TOKENIZER.decode(response) == answer + "<|im_end|>"  # the model learns to stop, not the "\n"
    # the whole chosen sequence is what the chat template renders for the conversation, minus the final "\n"
    full = TOKENIZER.apply_chat_template([*example.prompt, example.chosen], tokenize=False)
    assert TOKENIZER.decode(pair.chosen.input_ids) == full.rstrip()
    with pytest.raises(TypeError, match="tokenize_preference"):
        tokenize_example(example, TOKENIZER, max_length=512)


def test_truncation_keeps_the_end_of_the_prompt_and_the_start_of_the_answers() -> None:
    example = PreferenceExample(
        prompt=({"role": "user", "content": "x" * 60},),
        chosen={"role": "assistant", "content": "yes" * 5},
        rejected={"role": "assistant", "content": "no"},
    )
    full = tokenize_preference(example, TOKENIZER, max_length=10_000)
    pair = tokenize_preference(example, TOKENIZER, max_length=40)
    assert len(pair.chosen.input_ids) <= 40 and len(pair.rejected.input_ids) <= 40
    prompt_length = next(i for i, label in enumerate(full.chosen.labels) if label != IGNORE_INDEX)  # type: ignore[arg-type]
    kept_prompt = next(i for i, label in enumerate(pair.chosen.labels) if label != IGNORE_INDEX)  # type: ignore[arg-type]
    # the prompt lost its start: it still ends with the assistant header the answers follow
    assert (
        pair.chosen.input_ids[:kept_prompt]
        == full.chosen.input_ids[prompt_length - kept_prompt : prompt_length]
    )
    assert pair.rejected.input_ids[:kept_prompt] == pair.chosen.input_ids[:kept_prompt]
    # both answers fit whole here: the prompt gave way first
    assert pair.chosen.input_ids[kept_prompt:] == full.chosen.input_ids[prompt_length:]
    # an answer longer than max_length keeps its start, and the prompt keeps half of max_length
    long_answer = PreferenceExample(
        example.prompt, {"role": "assistant", "content": "y" * 100}, example.rejected
    )
    cut = tokenize_preference(long_answer, TOKENIZER, max_length=40)
    assert len(cut.chosen.input_ids) == 40
    assert sum(label == IGNORE_INDEX for label in cut.chosen.labels) == 20  # type: ignore[union-attr]
