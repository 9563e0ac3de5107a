"""Shapes shared by several resources: list pages, unix timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel

ItemT = TypeVar("ItemT")


def unix_seconds(moment: datetime | None) -> int | None:
    """Unix seconds; naive datetimes (as SQLite returns them) are UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def unix_seconds_required(moment: datetime) -> int:
    seconds = unix_seconds(moment)
    assert seconds is not None
    return seconds


class ListPage(BaseModel, Generic[ItemT]):
    """OpenAI's list object; `first_id`/`last_id` are the cursors of this page (pass last_id as `after`)."""

    object: Literal["list"] = "list"
    data: list[ItemT]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


def list_page(items: list[ItemT], ids: list[str], has_more: bool) -> ListPage[ItemT]:
    return ListPage(
        data=items, has_more=has_more, first_id=ids[0] if ids else None, last_id=ids[-1] if ids else None
    )
