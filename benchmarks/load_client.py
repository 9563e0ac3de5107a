"""A bounded closed-loop HTTP load generator: N concurrent httpx clients, a request budget and a deadline."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx

# One request of the load: given a client, send it and return the response.
Send = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int  # responses whose status was not the expected one (or transport failures)
    seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    index = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return sorted_ms[index]


async def run_load(
    base_url: str, send: Send, *, requests: int, concurrency: int, max_seconds: float, expect: int = 200
) -> LoadResult:
    """Each of `concurrency` workers sends its next request as soon as the last one answered (keep-alive),
    until `requests` were sent or `max_seconds` passed; latencies are per request, client side."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    remaining = requests
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            t0 = time.perf_counter()
            try:
                status = str((await send(client)).status_code)
            except httpx.HTTPError as error:
                status = type(error).__name__
            latencies.append((time.perf_counter() - t0) * 1000.0)
            statuses[status] = statuses.get(status, 0) + 1

    # trust_env=False: no proxy from the environment; the benchmark only ever talks to loopback.
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0, trust_env=False) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    latencies.sort()
    done = len(latencies)
    return LoadResult(
        requests=done,
        errors=done - statuses.get(str(expect), 0),
        seconds=round(seconds, 3),
        requests_per_second=round(done / seconds, 1) if seconds > 0 else 0.0,
        p50_ms=round(_percentile(latencies, 0.50), 2),
        p99_ms=round(_percentile(latencies, 0.99), 2),
        statuses=statuses,
    )


def median_result(results: list[LoadResult]) -> LoadResult:
    """The round with the median throughput (the lower middle one for an even count)."""
    ordered = sorted(results, key=lambda r: r.requests_per_second)
    return ordered[(len(ordered) - 1) // 2]


def spread(results: list[LoadResult]) -> list[float]:
    return [r.requests_per_second for r in results]


def mean_rps(results: list[LoadResult]) -> float:
    return round(statistics.fmean(r.requests_per_second for r in results), 1)
