"""A job's events oldest first, live: the server's event stream (`?stream=true`), resumed with
Last-Event-ID when the connection drops, and polling of the list route when streaming is unavailable.
Either way the iteration ends once the job is final and every event has been given."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx

from lorasp_client.connection import check_response

log = logging.getLogger(__name__)

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
POLL_SECONDS = 1.0
STREAM_ATTEMPTS = 3  # consecutive failed connections before polling takes over


class StreamUnavailable(Exception):
    """The server did not answer with an event stream (an older server, a proxy that buffers...)."""


def parse_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The `data` of each SSE message (comments and keep-alives skipped)."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield json.loads("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def _stream_once(http: httpx.Client, job_id: str, after: str | None) -> Iterator[dict[str, Any]]:
    headers = {"Last-Event-ID": after} if after else {}
    path = f"/fine_tuning/jobs/{job_id}/events"
    with http.stream("GET", path, params={"stream": "true"}, headers=headers) as response:
        check_response(response)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            raise StreamUnavailable(f"got {response.headers.get('content-type')!r}, not an event stream")
        yield from parse_sse(response.iter_lines())


def stream_events(http: httpx.Client, job_id: str, after: str | None = None) -> Iterator[dict[str, Any]]:
    """Events after `after` from the stream; reconnects (Last-Event-ID: no gaps, no repeats)."""
    failures = 0
    while True:
        try:
            for event in _stream_once(http, job_id, after):
                after, failures = event["id"], 0
                yield event
            return  # the server ends the stream once the job is final
        except httpx.TransportError as error:
            failures += 1
            if failures >= STREAM_ATTEMPTS:
                raise StreamUnavailable(f"the event stream kept failing: {error}") from error
            log.debug("event stream dropped (%s); reconnecting after %s", error, after)
            time.sleep(POLL_SECONDS)


def _newer_events(http: httpx.Client, job_id: str, after: str | None) -> list[dict[str, Any]]:
    """Events newer than `after` (all if None), oldest first, paging the newest-first list."""
    newer: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        response = http.get(f"/fine_tuning/jobs/{job_id}/events", params=params)
        check_response(response)
        page = response.json()
        for event in page["data"]:
            if event["id"] == after:
                return newer[::-1]
            newer.append(event)
        if not page["has_more"] or not page["data"]:
            return newer[::-1]
        params["after"] = page["data"][-1]["id"]


def poll_events(http: httpx.Client, job_id: str, after: str | None = None) -> Iterator[dict[str, Any]]:
    """The same events as stream_events, by polling (status first: a final status commits with its
    event, so the events read after it are complete)."""
    while True:
        response = http.get(f"/fine_tuning/jobs/{job_id}")
        check_response(response)
        final = response.json()["status"] in FINAL_STATUSES
        for event in _newer_events(http, job_id, after):
            after = event["id"]
            yield event
        if final:
            return
        time.sleep(POLL_SECONDS)


def follow_events(http: httpx.Client, job_id: str) -> Iterator[dict[str, Any]]:
    """Stream, falling back to polling from the last event given; API errors (404...) are raised."""
    last: str | None = None
    try:
        for event in stream_events(http, job_id):
            last = event["id"]
            yield event
        return
    except StreamUnavailable as why:
        log.warning("live events unavailable (%s); polling instead", why)
    yield from poll_events(http, job_id, last)
