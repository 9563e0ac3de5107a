"""Live job events as server-sent events: the job's events oldest first, then each new one as it is
written, until the job is in a final status.

The database is polled in short sessions of their own: no session or connection is held across the
wait, so an open stream costs the pool nothing while idle. Order and resumption follow `JobEvent.seq`,
the order the list route pages in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from fastapi.sse import format_sse_event
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.errors import not_found
from api.schemas.jobs import FineTuningJobEvent
from api.services.jobs import get_job
from lorasp_service import registry
from lorasp_service.jobs import TERMINAL_STATUSES
from lorasp_service.orm import Job, JobEvent, Tenant

# How often an open stream looks for new events (a new one arrives within this, plus a query).
POLL_SECONDS = 0.3
# A comment line this often while idle keeps proxies and load balancers from closing the connection.
KEEPALIVE_SECONDS = 15.0
# Events sent per poll at most; a longer backlog is drained over consecutive polls without waiting.
BATCH = 200
KEEPALIVE = b": keep-alive\n\n"


@dataclass(frozen=True)
class StreamStart:
    """Where a checked stream begins: after the event of sequence `after_seq` (0: from the first)."""

    job_id: str
    after_seq: int


def start_stream(session: Session, tenant: Tenant, job_id: str, after: str | None) -> StreamStart:
    """Check the job (another tenant's is the same 404 as an unknown one) and the resume point, then
    release the request's connection: the stream polls in sessions of its own."""
    job = get_job(session, tenant, job_id)
    after_seq = 0
    if after is not None:
        cursor = registry.get_event(session, job.id, after)
        if cursor is None:
            raise not_found("event", after, param="after")
        after_seq = cursor.seq
    session.close()
    return StreamStart(job.id, after_seq)


@dataclass(frozen=True)
class _Poll:
    events: list[FineTuningJobEvent]
    last_seq: int
    finished: bool  # the job is final and every event it has was in this poll


def _poll(sessions: sessionmaker[Session], job_id: str, after_seq: int) -> _Poll:
    with sessions() as session:
        # Status first, events second: a final status and its event commit together, so when the
        # status read is final, the events query (a later snapshot) sees every event of the job.
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        rows = list(
            session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
                .order_by(JobEvent.seq)
                .limit(BATCH)
            )
        )
    # A job deleted while streaming has no more events to give: end the stream as for a final status.
    final = status is None or status in TERMINAL_STATUSES
    last_seq = rows[-1].seq if rows else after_seq
    return _Poll([FineTuningJobEvent.from_row(row) for row in rows], last_seq, final and len(rows) < BATCH)


def encode(event: FineTuningJobEvent) -> bytes:
    """One SSE message: id = the event id, event = its type, data = the JSON the list route returns."""
    return format_sse_event(data_str=event.model_dump_json(), event=event.type, id=event.id)


async def stream_events(sessions: sessionmaker[Session], start: StreamStart) -> AsyncIterator[bytes]:
    after_seq, idle = start.after_seq, 0.0
    while True:
        poll = await run_in_threadpool(_poll, sessions, start.job_id, after_seq)
        for event in poll.events:
            yield encode(event)
        if poll.finished:
            return
        after_seq = poll.last_seq
        if len(poll.events) == BATCH:
            continue  # more backlog is waiting: no sleep
        if poll.events:
            idle = 0.0
        elif idle >= KEEPALIVE_SECONDS:
            yield KEEPALIVE
            idle = 0.0
        await anyio.sleep(POLL_SECONDS)
        idle += POLL_SECONDS
