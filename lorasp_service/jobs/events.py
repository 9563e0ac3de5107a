"""The one writer of job events: every event of a job, from the API or a worker, is added here."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from lorasp_service.db import session_scope
from lorasp_service.ids import new_id
from lorasp_service.orm import JobEvent
from lorasp_service.settings import Settings


class EventLevel(StrEnum):
    INFO = "info"
    WARN = "warn"
    ERROR = "error"


class EventType(StrEnum):
    MESSAGE = "message"
    METRICS = "metrics"  # data: one step's `step_metrics.metrics_data` (OpenAI's names + lorasp's)


def utcnow() -> datetime:
    return datetime.now(UTC)


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: EventLevel | str = EventLevel.INFO,
    type: EventType | str = EventType.MESSAGE,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append an event to the caller's transaction (the caller commits).

    Flushed at once so that its `seq`, the paging order, follows the order events were added in.
    """
    event = JobEvent(
        id=new_id("ftevent"),
        job_id=job_id,
        level=EventLevel(level),
        type=EventType(type),
        message=message,
        data=data,
        created_at=utcnow(),
    )
    session.add(event)
    session.flush()
    return event


def record_message(
    settings: Settings,
    job_id: str,
    message: str,
    *,
    level: EventLevel | str = EventLevel.INFO,
    data: dict[str, Any] | None = None,
) -> None:
    """An event in a transaction of its own (what a worker reports outside any status change)."""
    with session_scope(settings) as session:
        add_event(session, job_id, message, level=level, data=data)
        session.commit()
