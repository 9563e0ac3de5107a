"""Turn one decoded JSON object into an example, or into the list of problems that prevent it."""

from __future__ import annotations

from typing import Any

from lorasp_core.data.chat_messages import parse_messages
from lorasp_core.data.formats import (
    ClassificationExample,
    CompletionExample,
    DatasetFormat,
    DatasetProblem,
    Example,
)
from lorasp_core.data.json_values import LONE_SURROGATE_REASON, is_valid_unicode, json_type_name, string_field

TEXT_KEYS: tuple[str, ...] = ("text", "sentence")  # "sentence" as in GLUE SST-2


def detect_format(obj: dict[str, Any]) -> DatasetFormat | None:
    """The format an object is trying to be, judged by its keys (even if the values are wrong)."""
    if "input" in obj or "preferred_output" in obj:
        return DatasetFormat.PREFERENCE
    if "messages" in obj:
        return DatasetFormat.CHAT
    if "prompt" in obj or "completion" in obj:
        return DatasetFormat.PROMPT_COMPLETION
    if "label" in obj or any(key in obj for key in TEXT_KEYS):
        return DatasetFormat.CLASSIFICATION
    return None


def parse_chat(obj: dict[str, Any], line: int) -> Example | list[DatasetProblem]:
    return parse_messages(obj, line)


def parse_completion(obj: dict[str, Any], line: int) -> Example | list[DatasetProblem]:
    problems: list[DatasetProblem] = []
    # an empty prompt is legitimate (unconditional text); an empty completion has nothing to learn
    prompt = string_field(obj, "prompt", "prompt", line, problems, allow_empty=True)
    completion = string_field(obj, "completion", "completion", line, problems, allow_empty=False)
    if prompt is None or completion is None:
        return problems
    return CompletionExample(prompt=prompt, completion=completion)


def parse_classification(obj: dict[str, Any], line: int) -> Example | list[DatasetProblem]:
    problems: list[DatasetProblem] = []
    text_key = next((key for key in TEXT_KEYS if key in obj), "text")
    text = string_field(obj, text_key, text_key, line, problems, allow_empty=False)
    label: str | None = None
    if "label" not in obj:
        problems.append(DatasetProblem(line, "missing", "label"))
    else:
        raw_label = obj["label"]
        if isinstance(raw_label, bool) or not isinstance(raw_label, str | int):
            problems.append(
                DatasetProblem(line, f"must be a string or integer, got {json_type_name(raw_label)}", "label")
            )
        elif isinstance(raw_label, str) and not raw_label.strip():
            problems.append(DatasetProblem(line, "empty label", "label"))
        elif isinstance(raw_label, str) and not is_valid_unicode(raw_label):
            problems.append(DatasetProblem(line, LONE_SURROGATE_REASON, "label"))
        else:
            label = str(raw_label).strip()
    if text is None or label is None:
        return problems
    return ClassificationExample(text=text, label=label)


def parse_object(obj: dict[str, Any], fmt: DatasetFormat, line: int) -> Example | list[DatasetProblem]:
    if fmt is DatasetFormat.CHAT:
        return parse_chat(obj, line)
    if fmt is DatasetFormat.PROMPT_COMPLETION:
        return parse_completion(obj, line)
    return parse_classification(obj, line)


def parse_row(
    row: list[str], text_column: int, label_column: int, header: list[str], line: int
) -> Example | list[DatasetProblem]:
    """One CSV/TSV data row (already split) into a classification example."""
    if len(row) != len(header):
        return [DatasetProblem(line, f"expected {len(header)} columns ({', '.join(header)}), got {len(row)}")]
    problems: list[DatasetProblem] = []
    text, label = row[text_column], row[label_column].strip()
    if not text.strip():
        problems.append(DatasetProblem(line, "empty content", header[text_column]))
    if not label:
        problems.append(DatasetProblem(line, "empty label", header[label_column]))
    if problems:
        return problems
    return ClassificationExample(text=text, label=label)
