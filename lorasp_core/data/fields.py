"""Turn one decoded JSON object into an example, or into the list of problems that prevent it."""

from __future__ import annotations

from typing import Any

from lorasp_core.data.formats import (
    CHAT_ROLES,
    ChatExample,
    ClassificationExample,
    CompletionExample,
    DatasetFormat,
    DatasetProblem,
    Example,
)

TEXT_KEYS: tuple[str, ...] = ("text", "sentence")  # "sentence" as in GLUE SST-2


LONE_SURROGATE_REASON = (
    "contains a lone surrogate (a \\ud800-\\udfff escape without its pair): not valid Unicode"
)


def is_valid_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate: json.loads accepts "\\ud800", but no tokenizer or
    UTF-8 writer can take it, so it would fail the training job long after the upload was accepted."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_type_name(value: object) -> str:
    """The JSON name of a value's type, for messages like "must be a string, got null"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


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


def _string_field(
    obj: dict[str, Any], key: str, path: str, line: int, problems: list[DatasetProblem], *, allow_empty: bool
) -> str | None:
    if key not in obj:
        problems.append(DatasetProblem(line, "missing", path))
        return None
    value = obj[key]
    if not isinstance(value, str):
        problems.append(DatasetProblem(line, f"must be a string, got {json_type_name(value)}", path))
        return None
    if not allow_empty and not value.strip():
        problems.append(DatasetProblem(line, "empty content", path))
        return None
    if not is_valid_unicode(value):
        problems.append(DatasetProblem(line, LONE_SURROGATE_REASON, path))
        return None
    return value


def parse_chat(obj: dict[str, Any], line: int) -> Example | list[DatasetProblem]:
    problems: list[DatasetProblem] = []
    messages = obj["messages"]
    if not isinstance(messages, list):
        return [
            DatasetProblem(line, f"must be a list of messages, got {json_type_name(messages)}", "messages")
        ]
    if not messages:
        return [DatasetProblem(line, "empty conversation", "messages")]
    parsed: list[dict[str, str]] = []
    role_problem = False
    roles: set[str] = set()
    for index, message in enumerate(messages):
        path = f"messages[{index}]"
        if not isinstance(message, dict):
            problems.append(DatasetProblem(line, f"must be an object, got {json_type_name(message)}", path))
            role_problem = True
            continue
        role = _string_field(message, "role", f"{path}.role", line, problems, allow_empty=False)
        if role is not None and role not in CHAT_ROLES:
            problems.append(
                DatasetProblem(
                    line, f"unknown role {role!r} (expected system, user or assistant)", f"{path}.role"
                )
            )
            role = None
        role_problem = role_problem or role is None
        if role is not None:
            roles.add(role)
        content = _string_field(message, "content", f"{path}.content", line, problems, allow_empty=False)
        if role is not None and content is not None:
            # extra keys ("name", "weight") are tolerated and dropped: the template only needs these two
            parsed.append({"role": role, "content": content})
    # only claim "no assistant turn" when every role was readable, so a typo like 'bot' is not reported twice
    if not role_problem and "assistant" not in roles:
        problems.append(DatasetProblem(line, "no assistant message: nothing to train on", "messages"))
    if problems:
        return problems
    return ChatExample(messages=tuple(parsed))


def parse_completion(obj: dict[str, Any], line: int) -> Example | list[DatasetProblem]:
    problems: list[DatasetProblem] = []
    # an empty prompt is legitimate (unconditional text); an empty completion has nothing to learn
    prompt = _string_field(obj, "prompt", "prompt", line, problems, allow_empty=True)
    completion = _string_field(obj, "completion", "completion", line, problems, allow_empty=False)
    if prompt is None or completion is None:
        return problems
    return CompletionExample(prompt=prompt, completion=completion)


def parse_classification(obj: dict[str, Any], line: int) -> Example | list[DatasetProblem]:
    problems: list[DatasetProblem] = []
    text_key = next((key for key in TEXT_KEYS if key in obj), "text")
    text = _string_field(obj, text_key, text_key, line, problems, allow_empty=False)
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
