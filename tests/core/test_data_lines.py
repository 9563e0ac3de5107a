"""Bounded line reading (one huge line must not be held) and lone surrogates refused at validation."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorasp_core.data import DatasetError, read_examples, validate_dataset
from lorasp_core.data.lines import OVERLONG, LineLengthGuard, split_lines

CHAT_LINE = json.dumps(
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
)


def huge_line_chunks(line_bytes: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """A short line, a line of `line_bytes` bytes made lazily chunk by chunk, then a short line."""
    yield b"first\n"
    block = b"x" * chunk
    for _ in range(line_bytes // chunk):
        yield block
    yield b"\nlast\n"


def test_split_lines_keeps_newlines_and_marks_only_overlong_lines() -> None:
    chunks = [b"ab", b"c\nde", b"f\n\n", b"0123456789", b"\ntail"]
    assert list(split_lines(chunks, 6)) == [b"abc\n", b"def\n", b"\n", OVERLONG, b"tail"]
    # the limit counts the content, not the newline: exactly the limit is fine, one byte more is not
    assert list(split_lines([b"123456\n1234567\n"], 6)) == [b"123456\n", OVERLONG]
    assert list(split_lines([b"a" * 10], None)) == [b"a" * 10]
    assert list(split_lines([b"a" * 7], 6)) == [OVERLONG]


def test_split_lines_never_holds_an_overlong_line() -> None:
    limit = 256 * 1024
    tracemalloc.start()
    try:
        lines = list(split_lines(huge_line_chunks(64 * 1024 * 1024), limit))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == [b"first\n", OVERLONG, b"last\n"]
    # the limit plus a chunk or two in flight; holding the line would be 64 MiB
    assert peak < limit + 4 * 64 * 1024, f"peak {peak} bytes"


def test_line_length_guard_names_the_first_overlong_line_across_chunks() -> None:
    guard = LineLengthGuard(5)
    assert guard.feed(b"12345\n12") is None
    assert guard.feed(b"34") is None
    assert guard.feed(b"5\nok\n") is None
    assert guard.feed(b"fine\n123") is None
    assert guard.feed(b"456") == 5
    assert LineLengthGuard(3).feed(b"a\nbb\ncccc\nd") == 3


def test_validate_reports_an_overlong_line_by_number_and_keeps_going(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    long_line = json.dumps(
        {"messages": [{"role": "user", "content": "x" * 5000}, {"role": "assistant", "content": "y"}]}
    )
    path.write_text("\n".join([CHAT_LINE, long_line, CHAT_LINE]) + "\n")
    report = validate_dataset(path, max_line_bytes=4096)
    assert [(p.line, p.reason) for p in report.problems] == [
        (2, "longer than the limit of 4096 bytes per line")
    ]
    assert report.examples == 2
    assert validate_dataset(path, max_line_bytes=len(long_line)).ok
    with pytest.raises(DatasetError) as caught:
        list(read_examples(path, max_line_bytes=4096))
    assert caught.value.report.problems[0].line == 2


def test_validate_holds_less_than_the_limit_for_a_huge_line(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as handle:
        handle.write(CHAT_LINE.encode() + b"\n" + b'{"prompt": "')
        for _ in range(32):
            handle.write(b"z" * (1 << 20))
        handle.write(b'", "completion": "c"}\n')
    tracemalloc.start()
    try:
        report = validate_dataset(path, max_line_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [p.line for p in report.problems] == [2]
    assert peak < 3 << 20, f"peak {peak} bytes for a 32 MiB line"


def test_a_csv_line_over_the_limit_is_reported_on_its_line(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("text,label\nshort,1\n" + "w" * 300 + ",0\nok,0\n")
    report = validate_dataset(path, max_line_bytes=100)
    assert [(p.line, p.reason) for p in report.problems] == [
        (3, "longer than the limit of 100 bytes per line")
    ]
    assert report.examples == 2


@pytest.mark.parametrize(
    ("row", "field"),
    [
        (
            '{"messages": [{"role": "user", "content": "a\\ud800"}, {"role": "assistant", "content": "b"}]}',
            "messages[0].content",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "\\udfff"}]}',
            "messages[1].content",
        ),
        ('{"prompt": "p\\udc00", "completion": "c"}', "prompt"),
        ('{"text": "t", "label": "l\\ud834"}', "label"),
    ],
)
def test_a_lone_surrogate_is_a_problem_naming_line_and_field(tmp_path: Path, row: str, field: str) -> None:
    path = tmp_path / "train.jsonl"
    good = (
        CHAT_LINE
        if "messages" in row
        else row.replace("\\ud800", "").replace("\\udc00", "").replace("\\ud834", "")
    )
    path.write_text(good + "\n" + row + "\n")
    report = validate_dataset(path)
    assert [(p.line, p.field) for p in report.problems] == [(2, field)], report.summary()
    assert "lone surrogate" in report.problems[0].reason


def test_a_surrogate_pair_escape_is_valid_unicode(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "clef \\ud834\\udd1e", "completion": "music"}\n')
    report = validate_dataset(path)
    assert report.ok, report.summary()
    assert next(read_examples(path)).prompt == "clef \U0001d11e"  # type: ignore[union-attr]


def test_a_missing_file_is_reported_without_its_directory(tmp_path: Path) -> None:
    report = validate_dataset(tmp_path / "secret" / "gone.jsonl")
    assert report.summary() == "file: no such file: gone.jsonl"
    assert str(tmp_path) not in report.summary()
