"""validate_dataset: one streaming pass over a file, reporting every problem (up to a cap) and statistics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lorasp_core.data.formats import (
    ChatExample,
    ClassificationExample,
    DatasetFormat,
    DatasetProblem,
    DatasetReport,
    Example,
    PreferenceExample,
    UntrainedExampleProblem,
)
from lorasp_core.data.preference import count_pair_tokens
from lorasp_core.data.readers import DatasetScanner
from lorasp_core.data.tokenization import count_tokens, tokenize_example
from lorasp_core.data.tool_template import tool_support_problem

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class _ProblemCollector:
    """Keeps the first `cap` problems; remembers that more were dropped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.problems: list[DatasetProblem] = []
        self.truncated = False

    def add(self, problem: DatasetProblem) -> None:
        if len(self.problems) < self.cap:
            self.problems.append(problem)
        else:
            self.truncated = True


class _TokenCounter:
    """Token statistics, counted exactly as tokenize_example would tokenize each example."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_tokens: int | None) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.total = 0
        self.longest = 0
        self.disabled_reason: str | None = None
        self.tools_checked = False  # the template's tool support is probed once, at the first tool example

    def count(self, example: Example, line: int) -> DatasetProblem | None:
        if self.disabled_reason is not None:
            return None
        templated = isinstance(example, ChatExample | PreferenceExample)
        if templated and getattr(self.tokenizer, "chat_template", None) is None:
            # one file-level problem, not one per line
            self.disabled_reason = (
                "the tokenizer has no chat template, so chat or preference examples cannot be rendered"
            )
            return DatasetProblem(0, self.disabled_reason)
        if isinstance(example, ChatExample) and example.uses_tools:
            tool_problem = None if self.tools_checked else tool_support_problem(self.tokenizer)
            self.tools_checked = True
            if tool_problem is not None:
                # never flatten tool calls into plain text: the file is refused, once for the whole file
                self.disabled_reason = f"{tool_problem}; this file has tool calls (first on line {line})"
                return DatasetProblem(0, self.disabled_reason)
        try:
            if isinstance(example, ChatExample):
                # the full tokenization also derives the assistant spans, so a template that does not
                # render a message verbatim is caught at upload time rather than in the training job
                n_tokens = len(tokenize_example(example, self.tokenizer, max_length=sys.maxsize).input_ids)
            elif isinstance(example, PreferenceExample):
                n_tokens = count_pair_tokens(example, self.tokenizer)  # also checks the prompt is a prefix
            else:
                n_tokens = count_tokens(example, self.tokenizer)
        except Exception as error:  # noqa: BLE001 - a template may raise anything (jinja's raise_exception)
            return DatasetProblem(line, f"cannot be tokenized: {type(error).__name__}: {error}")
        self.total += n_tokens
        self.longest = max(self.longest, n_tokens)
        if self.max_tokens is not None and n_tokens > self.max_tokens:
            return DatasetProblem(line, f"too long: {n_tokens} tokens, the limit is {self.max_tokens}")
        return None


def validate_dataset(
    path: str | Path,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_tokens: int | None = None,
    min_examples: int = 1,
    max_problems: int = 20,
    expected_format: DatasetFormat | None = None,
    max_line_bytes: int | None = None,
) -> DatasetReport:
    """Read `path` once, streaming (constant memory), and report its problems and statistics.

    Problems carry 1-based line numbers (0 for the whole file). Blank lines are skipped, not reported.
    Token statistics and the max_tokens check need a tokenizer; max_tokens without one is ignored.
    A line longer than `max_line_bytes` (None: no limit) is a problem, found without holding the line.
    """
    if max_problems < 1:
        raise ValueError(f"max_problems must be >= 1, got {max_problems}")
    path = Path(path)
    collector = _ProblemCollector(max_problems)
    if not path.is_file():
        # the name only: the report reaches clients, the server's directories must not
        collector.add(DatasetProblem(0, f"no such file: {path.name}"))
        return DatasetReport(expected_format, 0, None, None, problems=collector.problems)
    counter = None if tokenizer is None else _TokenCounter(tokenizer, max_tokens)
    scanner = DatasetScanner(path, expected_format, max_line_bytes)
    examples = tool_examples = untrained_lines = 0
    label_counts: dict[str, int] = {}
    for line, item in scanner:
        if isinstance(item, DatasetProblem):
            untrained_lines += isinstance(item, UntrainedExampleProblem)
            collector.add(item)
            continue
        examples += 1
        tool_examples += isinstance(item, ChatExample) and item.uses_tools
        if isinstance(item, ClassificationExample):
            label_counts[item.label] = label_counts.get(item.label, 0) + 1
        if counter is not None:
            token_problem = counter.count(item, line)
            if token_problem is not None:
                collector.add(token_problem)
    if not scanner.saw_content:
        collector.add(DatasetProblem(0, "empty file"))
    elif examples == 0 and untrained_lines > 0:
        collector.add(
            DatasetProblem(0, "every assistant message in the file has weight 0: nothing to train on")
        )
    elif examples < min_examples:
        plural = "s" if min_examples != 1 else ""
        collector.add(
            DatasetProblem(0, f"{examples} valid examples, at least {min_examples} example{plural} needed")
        )
    return DatasetReport(
        format=scanner.format,
        examples=examples,
        tokens=None if counter is None else counter.total,
        max_example_tokens=None if counter is None else counter.longest,
        label_counts=label_counts,
        tool_examples=tool_examples,
        problems=collector.problems,
        problems_truncated=collector.truncated,
    )
