"""Keyset paging (newest first, or oldest first where a list takes `order`): fetch one row more than
asked to know whether there is a next page."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

RowT = TypeVar("RowT")

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


def fetch_page(session: Session, statement: Select[RowT], limit: int) -> tuple[list[RowT], bool]:
    """`statement` is already filtered past the cursor and ordered; returns (rows, has_more)."""
    rows = list(session.scalars(statement.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def newer_first_after(created_at_column: Any, id_column: Any, cursor_created_at: Any, cursor_id: str) -> Any:
    """Rows strictly after the cursor row in (created_at desc, id desc) order."""
    return (created_at_column < cursor_created_at) | (
        (created_at_column == cursor_created_at) & (id_column < cursor_id)
    )


def older_first_after(created_at_column: Any, id_column: Any, cursor_created_at: Any, cursor_id: str) -> Any:
    """Rows strictly after the cursor row in (created_at asc, id asc) order."""
    return (created_at_column > cursor_created_at) | (
        (created_at_column == cursor_created_at) & (id_column > cursor_id)
    )
