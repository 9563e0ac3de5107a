"""Small checks of decoded JSON values shared by the dataset parsers (type names, Unicode, strings)."""

from __future__ import annotations

from typing import Any

from lorasp_core.data.formats import DatasetProblem

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


def string_field(
    obj: dict[str, Any], key: str, path: str, line: int, problems: list[DatasetProblem], *, allow_empty: bool
) -> str | None:
    """obj[key] when it is a (non-empty unless allowed) valid-Unicode string; else a problem at `path`."""
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
