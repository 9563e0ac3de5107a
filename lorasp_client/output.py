"""Printing results: aligned columns or `key: value` lines for people, JSON with --json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any


def as_dict(item: Any) -> dict[str, Any]:
    """An openai client model (or a dict) as plain JSON data."""
    if hasattr(item, "model_dump"):
        return dict(item.model_dump(mode="json", exclude_unset=False))
    return dict(item)


def when(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return ""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(list(rows), indent=2))
        return
    if not rows:
        print("(none)")
        return
    cells = [[_cell(when(row.get(c)) if c == "created_at" else row.get(c)) for c in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    print("  ".join(column.upper().ljust(width) for column, width in zip(columns, widths, strict=True)))
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def print_object(item: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(item, indent=2))
        return
    for key, value in item.items():
        if value is None or value == {} or value == []:
            continue
        shown = when(value) if key.endswith("_at") or key == "estimated_finish" else value
        print(f"{key}: {json.dumps(shown) if isinstance(shown, dict | list) else shown}")
