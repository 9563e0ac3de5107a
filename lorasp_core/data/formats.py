"""Dataset formats, example types and the validation report shared by the data package."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class DatasetFormat(StrEnum):
    CHAT = "chat"
    PROMPT_COMPLETION = "prompt_completion"
    CLASSIFICATION = "classification"
    PREFERENCE = "preference"  # DPO pairs (lorasp_core/data/preference.py)


CHAT_ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})


@dataclass(frozen=True)
class ChatExample:
    """OpenAI fine-tuning chat format, parsed into what the tokenizer's chat template takes.

    Each message has 'role' and 'content' (None for an assistant turn that only calls tools), plus
    'tool_calls' (assistant; arguments parsed to dicts, transformers' convention) or 'tool_call_id'
    (tool). Legacy `functions` / `function_call` / `function` messages arrive here converted.
    """

    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] | None = None
    # per message: 0 = an assistant turn shown as context but not trained on; None: every turn trains
    weights: tuple[int, ...] | None = None
    parallel_tool_calls: bool | None = None

    def trains_message(self, index: int) -> bool:
        """Whether message `index` contributes to the loss (an assistant turn whose weight is not 0)."""
        if self.messages[index]["role"] != "assistant":
            return False
        return self.weights is None or self.weights[index] != 0

    @property
    def uses_tools(self) -> bool:
        """Tool definitions, tool calls or tool results: needs a chat template that renders tools."""
        return self.tools is not None or any(
            message["role"] == "tool" or "tool_calls" in message for message in self.messages
        )


@dataclass(frozen=True)
class CompletionExample:
    prompt: str
    completion: str


@dataclass(frozen=True)
class ClassificationExample:
    text: str
    label: str  # kept as a string; mapped to an id with label_names_for / label2id


@dataclass(frozen=True)
class PreferenceExample:
    """OpenAI's preference (DPO) format: a prompt conversation and a preferred and a rejected answer."""

    prompt: tuple[dict[str, str], ...]  # input.messages, not ending with an assistant message
    chosen: dict[str, str]  # the preferred_output's assistant message
    rejected: dict[str, str]  # the non_preferred_output's
    tools: Any = None  # input.tools, passed to the chat template as given


Example = ChatExample | CompletionExample | ClassificationExample | PreferenceExample


@dataclass(frozen=True)
class DatasetProblem:
    """One problem in a dataset file. line is 1-based; 0 means the file as a whole."""

    line: int
    reason: str
    field: str | None = None

    def describe(self) -> str:
        where = f"line {self.line}" if self.line > 0 else "file"
        if self.field is not None:
            return f"{where}: field '{self.field}': {self.reason}"
        return f"{where}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason, "field": self.field}


@dataclass(frozen=True)
class UntrainedExampleProblem(DatasetProblem):
    """A chat line whose every assistant turn has weight 0; a file of only such lines is also reported
    as a whole (validate_dataset tells them apart by this type)."""


@dataclass
class DatasetReport:
    format: DatasetFormat | None
    examples: int
    tokens: int | None
    max_example_tokens: int | None
    label_counts: dict[str, int] = field(default_factory=dict)
    tool_examples: int = 0  # chat examples with tools, tool calls or tool results
    problems: list[DatasetProblem] = field(default_factory=list)
    problems_truncated: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems and not self.problems_truncated

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (used by the API when it stores or returns a report)."""
        return {
            "format": None if self.format is None else self.format.value,
            "examples": self.examples,
            "tokens": self.tokens,
            "max_example_tokens": self.max_example_tokens,
            "label_counts": dict(self.label_counts),
            "tool_examples": self.tool_examples,
            "problems": [problem.to_dict() for problem in self.problems],
            "problems_truncated": self.problems_truncated,
            "ok": self.ok,
        }

    def summary(self) -> str:
        """One paragraph for humans: the problems joined by '; ', or the statistics when the file is fine."""
        if self.problems:
            text = "; ".join(problem.describe() for problem in self.problems)
            if self.problems_truncated:
                text += f"; ... more problems not shown (only the first {len(self.problems)} are reported)"
            return text
        kind = "dataset" if self.format is None else f"{self.format.value} dataset"
        parts = [f"{kind}: {self.examples} example{'s' if self.examples != 1 else ''}"]
        if self.tokens is not None:
            parts.append(f"{self.tokens} tokens (longest example {self.max_example_tokens})")
        if self.label_counts:
            ordered = sort_label_names(self.label_counts)
            parts.append("labels " + ", ".join(f"{name}={self.label_counts[name]}" for name in ordered))
        return ", ".join(parts)


class DatasetError(ValueError):
    """A dataset that cannot be used; report says why (its summary is the message)."""

    def __init__(self, report: DatasetReport) -> None:
        super().__init__(report.summary())
        self.report = report


def _is_int_string(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def sort_label_names(names: Iterable[str]) -> list[str]:
    """Sorted label names: numerically when every name is an integer ("2" after "10" otherwise)."""
    unique = set(names)
    if unique and all(_is_int_string(name) for name in unique):
        return sorted(unique, key=lambda name: (int(name), name))
    return sorted(unique)


def label_names_for(examples: Iterable[Example]) -> list[str]:
    """Label names of the classification examples, in id order (index = class id)."""
    return sort_label_names(ex.label for ex in examples if isinstance(ex, ClassificationExample))
