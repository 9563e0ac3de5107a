"""Streaming readers for JSONL, CSV and TSV dataset files.

Files are read as bytes in bounded chunks, split into physical lines (lines.py), and each line is
decoded on its own, so an undecodable byte is reported on the right line and memory stays constant
whatever the file size; a line longer than `max_line_bytes` is reported without ever being held.
Blank lines are skipped silently (a trailing newline or a blank separator line is common and harmless).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from lorasp_core.data.fields import TEXT_KEYS, detect_format, parse_object, parse_row
from lorasp_core.data.formats import DatasetError, DatasetFormat, DatasetProblem, DatasetReport, Example
from lorasp_core.data.json_values import json_type_name
from lorasp_core.data.lines import OverlongLine, file_chunks, line_too_long_reason, split_lines
from lorasp_core.data.preference import parse_preference

Layout = Literal["jsonl", "csv", "tsv"]
ScanItem = tuple[int, Example | DatasetProblem]

_UTF8_BOM = b"\xef\xbb\xbf"
_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
# A first line longer than this is sniffed as JSONL (a CSV header is short); the scan then reports it.
_SNIFF_BYTES = 64 * 1024


def _decode_line(raw: bytes | OverlongLine, line: int, limit: int | None) -> str | DatasetProblem:
    if isinstance(raw, OverlongLine):
        assert limit is not None  # split_lines only drops lines when there is a limit
        return DatasetProblem(line, line_too_long_reason(limit))
    if line == 1 and raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return DatasetProblem(
            line, f"undecodable UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start})"
        )


def detect_layout(path: Path) -> Layout:
    """JSONL / CSV / TSV from the extension, otherwise by sniffing the first non-blank line."""
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix == ".tsv":
        return "tsv"
    with path.open("rb") as handle:
        # a bounded line: sniffing must not read a huge first line whole
        for raw in split_lines(file_chunks(handle), _SNIFF_BYTES):
            if isinstance(raw, OverlongLine):
                return "jsonl"
            first = raw.removeprefix(_UTF8_BOM).strip()
            if not first:
                continue
            if first.startswith((b"{", b"[")):
                return "jsonl"
            return "tsv" if b"\t" in first else "csv"
    return "jsonl"


class _DecodedLines:
    """Feeds decoded lines to csv.reader and remembers where the current record started."""

    def __init__(self, path: Path, max_line_bytes: int | None) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.record_start: int | None = None
        self.pending: list[DatasetProblem] = []
        self.saw_content = False

    def __iter__(self) -> Iterator[str]:
        with self.path.open("rb") as handle:
            lines = split_lines(file_chunks(handle), self.max_line_bytes)
            for line, raw in enumerate(lines, start=1):
                decoded = _decode_line(raw, line, self.max_line_bytes)
                if isinstance(decoded, DatasetProblem):
                    self.pending.append(decoded)
                    self.saw_content = True
                    continue
                if decoded.strip():
                    self.saw_content = True
                if self.record_start is None:
                    self.record_start = line
                yield decoded


class DatasetScanner:
    """Iterates a dataset file once, yielding (line, example) or (line, problem) in file order.

    A line can yield several problems. The format is `expected_format` when given, otherwise the format
    of the first valid example; later examples of another format are reported as problems.
    """

    def __init__(
        self,
        path: str | Path,
        expected_format: DatasetFormat | None = None,
        max_line_bytes: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_line_bytes = max_line_bytes
        self.expected_format = expected_format
        self.format: DatasetFormat | None = expected_format
        self.format_line: int | None = None
        self.saw_content = False

    def __iter__(self) -> Iterator[ScanItem]:
        layout = detect_layout(self.path)
        if layout == "jsonl":
            yield from self._scan_jsonl()
        else:
            yield from self._scan_delimited("\t" if layout == "tsv" else ",")

    def _mixed_format_problem(self, found: DatasetFormat, line: int) -> DatasetProblem | None:
        if self.format is None or found is self.format:
            return None
        if self.expected_format is not None or self.format_line is None:
            return DatasetProblem(line, f"expected {self.format.value} data, got a {found.value} example")
        return DatasetProblem(
            line,
            f"mixed formats: this is a {found.value} example but the file is {self.format.value} "
            f"(decided by line {self.format_line})",
        )

    def _accept(
        self, example: Example | list[DatasetProblem], fmt: DatasetFormat, line: int
    ) -> Iterator[ScanItem]:
        if isinstance(example, list):
            yield from ((problem.line, problem) for problem in example)
            return
        if self.format is None:
            self.format = fmt
        if self.format_line is None:
            self.format_line = line
        yield line, example

    def _scan_jsonl(self) -> Iterator[ScanItem]:
        with self.path.open("rb") as handle:
            lines = split_lines(file_chunks(handle), self.max_line_bytes)
            for line, raw in enumerate(lines, start=1):
                decoded = _decode_line(raw, line, self.max_line_bytes)
                if isinstance(decoded, DatasetProblem):
                    self.saw_content = True
                    yield line, decoded
                    continue
                if not decoded.strip():
                    continue
                self.saw_content = True
                try:
                    obj = json.loads(decoded)
                except (ValueError, RecursionError) as error:
                    detail = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
                    yield line, DatasetProblem(line, f"invalid JSON ({detail})")
                    continue
                if not isinstance(obj, dict):
                    yield (
                        line,
                        DatasetProblem(line, f"top-level value must be an object, got {json_type_name(obj)}"),
                    )
                    continue
                fmt = detect_format(obj)
                if fmt is None:
                    keys = ", ".join(repr(key) for key in list(obj)[:5]) or "none"
                    reason = (
                        "unrecognised example: expected 'messages', 'input'/'preferred_output', "
                        f"'prompt'/'completion' or '{TEXT_KEYS[0]}'/'label' keys, got {keys}"
                    )
                    yield line, DatasetProblem(line, reason)
                    continue
                mixed = self._mixed_format_problem(fmt, line)
                if mixed is not None:
                    yield line, mixed
                    continue
                parsed: Example | list[DatasetProblem]
                if fmt is DatasetFormat.PREFERENCE:
                    parsed = parse_preference(obj, line)
                else:
                    parsed = parse_object(obj, fmt, line)
                yield from self._accept(parsed, fmt, line)

    def _scan_delimited(self, delimiter: str) -> Iterator[ScanItem]:
        source = _DecodedLines(self.path, self.max_line_bytes)
        # TSV (GLUE style) has no quoting: a sentence may start with a quote character
        if delimiter == "\t":
            reader = csv.reader(source, delimiter=delimiter, quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(source, delimiter=delimiter)
        kind = "TSV" if delimiter == "\t" else "CSV"
        header: list[str] | None = None
        text_column = label_column = -1
        while True:
            try:
                row = next(reader)
                error: csv.Error | None = None
            except StopIteration:
                row, error = None, None
            except csv.Error as caught:
                row, error = [], caught
            yield from ((problem.line, problem) for problem in source.pending)
            source.pending.clear()
            self.saw_content = source.saw_content
            if row is None:
                return
            line = source.record_start or 0
            source.record_start = None
            if error is not None:
                yield line, DatasetProblem(line, f"invalid {kind} ({error})")
                continue
            if not row or not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [name.strip().lower() for name in row]
                text_column = next((header.index(key) for key in TEXT_KEYS if key in header), -1)
                label_column = header.index("label") if "label" in header else -1
                if text_column < 0 or label_column < 0:
                    shown = delimiter.join(row)
                    reason = f"header must name the columns text,label or sentence,label; got {shown!r}"
                    yield line, DatasetProblem(line, reason)
                    return
                mixed = self._mixed_format_problem(DatasetFormat.CLASSIFICATION, line)
                if mixed is not None:
                    yield line, mixed
                    return
                continue
            yield from self._accept(
                parse_row(row, text_column, label_column, header, line), DatasetFormat.CLASSIFICATION, line
            )


def read_examples(
    path: str | Path, *, expected_format: DatasetFormat | None = None, max_line_bytes: int | None = None
) -> Iterator[Example]:
    """Stream the examples of a file; raise DatasetError (with a one-problem report) on the first bad line."""
    scanner = DatasetScanner(path, expected_format, max_line_bytes)
    examples_so_far = 0
    for _line, item in scanner:
        if isinstance(item, DatasetProblem):
            raise DatasetError(DatasetReport(scanner.format, examples_so_far, None, None, problems=[item]))
        examples_so_far += 1  # noqa: SIM113 - counts examples only, not scanned items
        yield item
