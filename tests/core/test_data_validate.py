"""validate_dataset / read_examples: every format, every problem kind with its line number, the cap."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from lorasp_core.data import (
    ChatExample,
    ClassificationExample,
    CompletionExample,
    DatasetError,
    DatasetFormat,
    DatasetProblem,
    label_names_for,
    read_examples,
    validate_dataset,
)

SYSTEM = {"role": "system", "content": "Be brief."}


def chat(user: str = "Hi", answer: str = "Hello") -> dict[str, Any]:
    return {"messages": [SYSTEM, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def write_lines(path: Path, lines: list[str | dict[str, Any] | bytes]) -> Path:
    with path.open("wb") as handle:
        for line in lines:
            if isinstance(line, bytes):
                handle.write(line + b"\n")
            elif isinstance(line, str):
                handle.write(line.encode("utf-8") + b"\n")
            else:
                handle.write(json.dumps(line).encode("utf-8") + b"\n")
    return path


def problem_at(line: int, problems: list[DatasetProblem]) -> list[DatasetProblem]:
    return [problem for problem in problems if problem.line == line]


def test_valid_chat_file_with_extra_keys(tmp_path: Path) -> None:
    weighted = chat("Q", "A")
    weighted["messages"][2]["weight"] = 1
    weighted["messages"][1]["name"] = "alice"
    path = write_lines(tmp_path / "chat.jsonl", [chat(), weighted, ""])  # trailing blank line is skipped
    report = validate_dataset(path)
    assert report.ok, report.summary()
    assert report.format is DatasetFormat.CHAT
    assert report.examples == 2
    assert report.tokens is None and report.max_example_tokens is None
    examples = list(read_examples(path))
    assert examples[1] == ChatExample(
        messages=(SYSTEM, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"})
    )
    assert "chat dataset: 2 examples" in report.summary()


def test_last_message_may_be_user_when_an_assistant_turn_exists(tmp_path: Path) -> None:
    record = chat()
    record["messages"].append({"role": "user", "content": "thanks"})
    report = validate_dataset(write_lines(tmp_path / "c.jsonl", [record]))
    assert report.ok, report.summary()


def test_each_chat_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    no_assistant = {"messages": [SYSTEM, {"role": "user", "content": "Hi"}]}
    bad_role = chat()
    bad_role["messages"][1]["role"] = "bot"
    empty_content = chat(answer="   ")
    wrong_type = chat()
    wrong_type["messages"][1]["content"] = 5
    lines: list[str | dict[str, Any] | bytes] = [
        chat(),  # 1: decides the format
        '{"messages": [}',  # 2
        b'{"messages": "\xff\xfe"}',  # 3
        "[1, 2]",  # 4
        no_assistant,  # 5
        bad_role,  # 6
        empty_content,  # 7
        wrong_type,  # 8
        {"messages": [SYSTEM, {"content": "x"}, {"role": "assistant", "content": "y"}]},  # 9
        {"messages": "hello"},  # 10
        {"prompt": "p", "completion": "c"},  # 11: another format
        {"foo": 1},  # 12
        "",  # 13: blank, skipped
        chat(),  # 14
    ]
    report = validate_dataset(write_lines(tmp_path / "bad.jsonl", lines))
    assert not report.ok
    assert report.examples == 2
    problems = report.problems
    assert [p.line for p in problems] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert problem_at(2, problems)[0].reason.startswith("invalid JSON (")
    assert "undecodable UTF-8" in problem_at(3, problems)[0].reason
    assert problem_at(4, problems)[0].reason == "top-level value must be an object, got array"
    assert problem_at(5, problems)[0].field == "messages"
    assert "no assistant" in problem_at(5, problems)[0].reason
    assert problem_at(6, problems)[0].field == "messages[1].role"
    assert "unknown role 'bot'" in problem_at(6, problems)[0].reason
    assert problem_at(7, problems)[0] == DatasetProblem(7, "empty content", "messages[2].content")
    assert problem_at(8, problems)[0] == DatasetProblem(
        8, "must be a string, got integer", "messages[1].content"
    )
    assert problem_at(9, problems)[0] == DatasetProblem(9, "missing", "messages[1].role")
    assert problem_at(10, problems)[0].field == "messages"
    assert "mixed formats" in problem_at(11, problems)[0].reason
    assert "line 1" in problem_at(11, problems)[0].reason
    assert "unrecognised example" in problem_at(12, problems)[0].reason
    summary = report.summary()
    assert "line 2: invalid JSON (" in summary
    assert "line 6: field 'messages[1].role': unknown role 'bot'" in summary
    assert report.to_dict()["problems"][0]["line"] == 2
    json.dumps(report.to_dict())  # must be serialisable for the API


def test_invalid_json_reason_names_the_parser_error(tmp_path: Path) -> None:
    report = validate_dataset(write_lines(tmp_path / "x.jsonl", [chat(), chat(), '{"a": 1 "b": 2}']))
    assert report.summary() == "line 3: invalid JSON (Expecting ',' delimiter)"


def test_problem_cap_and_truncation_flag(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "many.jsonl", [chat()] + ["not json"] * 30)
    report = validate_dataset(path)
    assert len(report.problems) == 20 and report.problems_truncated
    assert [p.line for p in report.problems] == list(range(2, 22))
    assert "more problems not shown" in report.summary()
    small = validate_dataset(path, max_problems=3)
    assert [p.line for p in small.problems] == [2, 3, 4] and small.problems_truncated
    exact = validate_dataset(write_lines(tmp_path / "few.jsonl", [chat(), "x", "y"]), max_problems=2)
    assert len(exact.problems) == 2 and not exact.problems_truncated


def test_empty_file_and_min_examples(tmp_path: Path) -> None:
    empty = validate_dataset(write_lines(tmp_path / "empty.jsonl", ["", "  "]))
    assert empty.problems == [DatasetProblem(0, "empty file")]
    assert empty.summary() == "file: empty file"
    few = validate_dataset(write_lines(tmp_path / "few.jsonl", [chat(), chat()]), min_examples=3)
    assert len(few.problems) == 1 and few.problems[0].line == 0
    assert "at least 3" in few.problems[0].reason
    assert validate_dataset(tmp_path / "missing.jsonl").problems[0].reason.startswith("no such file")


def test_prompt_completion_format_and_problems(tmp_path: Path) -> None:
    lines: list[str | dict[str, Any] | bytes] = [
        {"prompt": "2+2=", "completion": " 4"},
        {"prompt": "", "completion": "free text"},  # empty prompt is allowed
        {"prompt": "x"},
        {"prompt": 3, "completion": ""},
        chat(),
    ]
    path = write_lines(tmp_path / "pc.jsonl", lines)
    report = validate_dataset(path)
    assert report.format is DatasetFormat.PROMPT_COMPLETION and report.examples == 2
    assert report.problems[0] == DatasetProblem(3, "missing", "completion")
    assert problem_at(4, report.problems) == [
        DatasetProblem(4, "must be a string, got integer", "prompt"),
        DatasetProblem(4, "empty content", "completion"),
    ]
    assert "mixed formats" in problem_at(5, report.problems)[0].reason
    first_two = read_examples(path)
    assert next(first_two) == CompletionExample("2+2=", " 4")


def test_classification_jsonl_labels_and_counts(tmp_path: Path) -> None:
    lines: list[str | dict[str, Any] | bytes] = [
        {"text": "good", "label": 1},
        {"text": "bad", "label": "0"},
        {"text": "meh", "label": 10},
        {"text": "fine", "label": 2},
        {"text": "x", "label": 1.5},
        {"text": "", "label": 1},
        {"label": 1},
        {"text": "y", "label": True},
    ]
    path = write_lines(tmp_path / "cls.jsonl", lines)
    report = validate_dataset(path)
    assert report.format is DatasetFormat.CLASSIFICATION
    assert report.label_counts == {"1": 1, "0": 1, "10": 1, "2": 1}
    expected = [(5, "label"), (6, "text"), (7, "text"), (8, "label")]
    assert [(p.line, p.field) for p in report.problems] == expected
    clean = validate_dataset(write_lines(tmp_path / "clean.jsonl", lines[:4]))
    assert clean.ok and clean.summary().endswith("labels 0=1, 1=1, 2=1, 10=1")
    numeric = [ClassificationExample(text, label) for text, label in [("a", "2"), ("b", "10"), ("c", "1")]]
    assert label_names_for(numeric) == ["1", "2", "10"]  # numeric order, not string order "1", "10", "2"
    words = [ClassificationExample(text, label) for text, label in [("a", "pos"), ("b", "neg"), ("c", "pos")]]
    assert label_names_for(words) == ["neg", "pos"]
    assert label_names_for([ClassificationExample("a", "10"), ClassificationExample("b", "x")]) == ["10", "x"]


def test_sst2_tsv_with_quotes(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text('sentence\tlabel\nhide new secretions \t0\n" a quoted start\t1\n\nsimply brilliant\t1\n')
    report = validate_dataset(path)
    assert report.ok, report.summary()
    assert report.format is DatasetFormat.CLASSIFICATION
    assert report.label_counts == {"0": 1, "1": 2}
    examples = list(read_examples(path))
    assert examples[1] == ClassificationExample('" a quoted start', "1")
    assert label_names_for(examples) == ["0", "1"]


def test_csv_with_quoted_commas_multiline_rows_and_problems(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(
        b'\xef\xbb\xbftext,label\n"great, really",positive\n"spans\ntwo lines",negative\n'
        b"too,many,columns\n,positive\nok,\n\xff\xfe,negative\nfine,negative\n"
    )
    report = validate_dataset(path)
    assert report.examples == 3
    assert report.label_counts == {"positive": 1, "negative": 2}
    assert [(p.line, p.field) for p in report.problems] == [(5, None), (6, "text"), (7, "label"), (8, None)]
    assert "expected 2 columns" in report.problems[0].reason
    assert "undecodable UTF-8" in report.problems[3].reason
    with pytest.raises(DatasetError) as raised:
        list(read_examples(path))
    assert raised.value.report.problems[0].line == 5


def test_delimited_layout_is_sniffed_without_extension_and_header_is_checked(tmp_path: Path) -> None:
    sniffed_tsv = tmp_path / "upload"
    sniffed_tsv.write_text("sentence\tlabel\nnice film\t1\n")
    assert list(read_examples(sniffed_tsv)) == [ClassificationExample("nice film", "1")]
    sniffed_jsonl = tmp_path / "upload2"
    sniffed_jsonl.write_text(json.dumps(chat()) + "\n")
    assert validate_dataset(sniffed_jsonl).format is DatasetFormat.CHAT
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("review,score\nnice,1\n")
    report = validate_dataset(bad_header)
    assert report.problems[0].line == 1 and "header" in report.problems[0].reason


def test_expected_format_rejects_other_formats(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "pc.jsonl", [{"prompt": "a", "completion": "b"}])
    report = validate_dataset(path, expected_format=DatasetFormat.CHAT)
    assert report.examples == 0
    assert report.problems[0].line == 1 and "expected chat data" in report.problems[0].reason
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("text,label\na,b\n")
    assert "expected chat" in validate_dataset(csv_path, expected_format=DatasetFormat.CHAT).summary()


def test_read_examples_is_lazy_and_raises_on_the_first_bad_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [chat("one"), chat("two"), "{broken", chat("four")])
    stream = read_examples(path)
    first = next(stream)
    assert isinstance(first, ChatExample) and first.messages[1]["content"] == "one"
    next(stream)
    with pytest.raises(DatasetError) as raised:
        next(stream)
    assert raised.value.report.problems[0].line == 3
    assert str(raised.value).startswith("line 3: invalid JSON")


def test_validation_streams_in_constant_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for index in range(200_000):
            handle.write(f'{{"text": "review number {index} of a long file", "label": "{index % 2}"}}\n')
        handle.write("oops\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        report = validate_dataset(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.examples == 200_000
    assert report.label_counts == {"0": 100_000, "1": 100_000}
    assert [p.line for p in report.problems] == [200_001]
    assert peak < size / 20, f"peak {peak} bytes for a {size}-byte file"
