"""Prometheus metrics: the instruments the API updates, and `GET /metrics` (LORASP_METRICS_ENABLED=1).

Instruments (HTTP requests, latency, inference tokens, time to first token) are module-level on their
own registry, as prometheus-client intends. Figures owned by others are read at scrape time by
collectors (`api.metrics_collectors`): the serving engine's counters (lorasp_core imports no metrics
library) and the database's jobs and training speeds.

Several uvicorn workers: set PROMETHEUS_MULTIPROC_DIR to an empty folder shared by the workers before
they start; each worker then writes its instruments there and a scrape of any worker sums them all
(`MultiProcessCollector`). Scrape-time figures are then those of the worker that answers (the
engine's) or the deployment's (the database's). No label carries a key or a tenant.
"""

from __future__ import annotations

import os
import time

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import AppResources

INSTRUMENTS = CollectorRegistry(auto_describe=True)
UNMATCHED_ROUTE = "<unmatched>"  # unknown URLs share one series (paths would be unbounded)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

HTTP_REQUESTS = Counter(
    "lorasp_http_requests",
    "HTTP requests answered, by route template and status",
    ["method", "route", "status"],
    registry=INSTRUMENTS,
)
HTTP_LATENCY = Histogram(
    "lorasp_http_request_duration_seconds",
    "Time from request to the end of the response (a stream's last byte)",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
    registry=INSTRUMENTS,
)
PROMPT_TOKENS = Counter(
    "lorasp_inference_prompt_tokens",
    "Prompt tokens of finished generations, by base model and adapter ('' for the base model)",
    ["base_model", "adapter"],
    registry=INSTRUMENTS,
)
COMPLETION_TOKENS = Counter(
    "lorasp_inference_completion_tokens",
    "Generated tokens, by base model and adapter ('' for the base model)",
    ["base_model", "adapter"],
    registry=INSTRUMENTS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "lorasp_inference_time_to_first_token_seconds",
    "From the request reaching the engine to its first generated text",
    ["base_model", "adapter"],
    buckets=LATENCY_BUCKETS,
    registry=INSTRUMENTS,
)


def observe_generation(
    base_model: str, adapter_id: str | None, prompt_tokens: int, completion_tokens: int, ttft: float | None
) -> None:
    labels = (base_model, adapter_id or "")
    PROMPT_TOKENS.labels(*labels).inc(prompt_tokens)
    COMPLETION_TOKENS.labels(*labels).inc(completion_tokens)
    if ttft is not None:
        TIME_TO_FIRST_TOKEN.labels(*labels).observe(ttft)


def route_template(scope: Scope) -> str:
    """The matched route's template with its router prefix ("/v1/files/{file_id}"). FastAPI keeps an
    included router's prefix off its routes, so the prefix is the request path before the part the
    route's own pattern matches (the shortest such prefix: a router prefix has no parameters)."""
    route = scope.get("route")
    pattern, template = getattr(route, "path_regex", None), getattr(route, "path", None)
    if pattern is None or not isinstance(template, str):
        return UNMATCHED_ROUTE
    path: str = scope.get("path", "")
    for index, char in enumerate(path):
        if char == "/" and pattern.match(path[index:]):
            return path[:index] + template
    return template


class HTTPMetrics:
    """Counts every HTTP response and its duration under the matched route's template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            route = route_template(scope)  # the router stored the matched route in the (shared) scope
            method = scope["method"]
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - started)


def scrape_registry(resources: AppResources) -> CollectorRegistry:
    """What one scrape of this app reports: its instruments (every worker's in multi-process mode)
    and the scrape-time collectors."""
    from api.metrics_collectors import DatabaseCollector, ServingCollector

    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(INSTRUMENTS)
    registry.register(ServingCollector(resources))
    registry.register(DatabaseCollector(resources))
    return registry


def install_metrics(app: FastAPI, resources: AppResources) -> None:
    app.add_middleware(HTTPMetrics)
    registry = scrape_registry(resources)

    async def metrics(_: Request) -> Response:
        # The database collector queries: off the event loop.
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
