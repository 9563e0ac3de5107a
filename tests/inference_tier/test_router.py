"""InferenceRouter over fake processes (httpx.MockTransport): affinity, failover before a stream starts,
a cut stream failing its request alone, typed errors, and nothing reachable."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.inference_tier import wire
from api.inference_tier.remote_stream import RemoteGenerationStream
from api.inference_tier.rendezvous import rendezvous_order, routing_key
from api.inference_tier.router import InferenceRouter
from lorasp_core.serving import (
    AdapterCacheCounters,
    BatchingFigures,
    GenerationChunk,
    GenerationRequest,
    GenerationStream,
    UnknownAdapterError,
)
from lorasp_service.settings import Settings

URLS = ["http://inference-a:8100", "http://inference-b:8100"]
MODEL = "tiny-random-llama"


def ndjson(*events: dict[str, object]) -> bytes:
    return b"".join(json.dumps(event).encode() + b"\n" for event in events)


FULL_ANSWER = ndjson(
    {"chunk": wire.to_wire(GenerationChunk("he", 1, prompt_tokens=3))},
    {"chunk": wire.to_wire(GenerationChunk("llo", 2, "stop", prompt_tokens=3))},
)


class FakeProcesses:
    """Answers for each process; a process in `down` refuses connections. Records every attempt."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.attempts: Counter[str] = Counter()
        self.cut_streams = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        origin = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        self.attempts[origin] += 1
        assert request.headers["authorization"] == "Bearer s3cret"
        if origin in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        body = json.loads(request.content) if request.content else None
        if request.url.path == "/generate":
            if body["adapter_id"] == "ft:unknown":
                error = wire.error_to_wire(UnknownAdapterError("adapter 'ft:unknown' is not in the registry"))
                return httpx.Response(404, json={"error": error})
            if self.cut_streams:
                return httpx.Response(200, content=self._cut())
            return httpx.Response(200, content=FULL_ANSWER, headers={"x-process": origin})
        if request.url.path == "/figures":
            counters = {"hits": 3, "loads": 2, "evictions": 1}
            batching = {
                "mode": "continuous",
                "running_rows": 3,
                "waiting_requests": 1,
                "kv_cache_bytes": 1000,
            }
            figures = {
                "pending_requests": 1,
                "batch_sizes": [2, 1],
                "cache_counters": counters,
                "batching": batching,
            }
            return httpx.Response(200, json={**figures, "resident_adapters": 2})
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok", "name": origin, "hot": []})
        raise AssertionError(f"unexpected {request.method} {request.url}")

    @staticmethod
    def _cut() -> Iterator[bytes]:
        yield ndjson({"chunk": wire.to_wire(GenerationChunk("he", 1, prompt_tokens=3))})
        raise httpx.ReadError("connection reset by peer")


@pytest.fixture
def processes() -> FakeProcesses:
    return FakeProcesses()


@pytest.fixture
def router(processes: FakeProcesses, tmp_path: Path) -> Iterator[InferenceRouter]:
    settings = Settings(
        home=tmp_path,
        inference_urls=URLS,
        inference_secret="s3cret",
        inference_health_interval_seconds=0,  # no thread: tests call check_health themselves
        inference_retry_backoff_seconds=60,
    )
    router = InferenceRouter(settings, transport=httpx.MockTransport(processes))
    yield router
    router.close()


def adapter_preferring(url: str) -> str:
    """An adapter id whose first choice is `url`."""
    return next(
        f"ft:{MODEL}:a{index}"
        for index in range(100)
        if rendezvous_order(routing_key(MODEL, f"ft:{MODEL}:a{index}"), URLS)[0] == url
    )


def process_of(stream: GenerationStream) -> str:
    assert isinstance(stream, RemoteGenerationStream)
    return stream.process


def request_for(adapter_id: str) -> GenerationRequest:
    return GenerationRequest(model=MODEL, adapter_id=adapter_id, prompt="hi", max_tokens=2)


def test_an_adapter_always_goes_to_its_first_choice(
    router: InferenceRouter, processes: FakeProcesses
) -> None:
    for url in URLS:
        adapter = adapter_preferring(url)
        for _ in range(3):
            stream = router.generate(request_for(adapter))
            assert stream.text() == "hello"
            assert process_of(stream) == url
    assert processes.attempts == Counter({URLS[0]: 3, URLS[1]: 3})


def test_a_refused_connection_moves_the_request_and_the_dead_process_is_skipped_after(
    router: InferenceRouter, processes: FakeProcesses
) -> None:
    dead, alive = URLS
    processes.down.add(dead)
    adapter = adapter_preferring(dead)
    for _ in range(3):  # no request fails: each is sent before anything streamed
        assert router.generate(request_for(adapter)).text() == "hello"
    assert processes.attempts[dead] == 1  # tried once, then skipped for the backoff
    assert processes.attempts[alive] == 3
    assert router.healthy_urls() == [alive]


def test_the_health_check_brings_a_process_back(router: InferenceRouter, processes: FakeProcesses) -> None:
    dead = URLS[0]
    processes.down.add(dead)
    router.check_health()
    assert router.healthy_urls() == [URLS[1]]
    processes.down.clear()
    router._down_until[dead] = 0.0  # the backoff is over
    router.check_health()
    assert router.healthy_urls() == URLS
    assert process_of(router.generate(request_for(adapter_preferring(dead)))) == dead


def test_a_stream_cut_midway_fails_that_request_alone(
    router: InferenceRouter, processes: FakeProcesses
) -> None:
    target = URLS[0]
    adapter = adapter_preferring(target)
    processes.cut_streams = True
    stream = router.generate(request_for(adapter))
    assert next(stream).text_delta == "he"
    with pytest.raises(wire.InferenceStreamBrokenError):
        next(stream)
    assert router.healthy_urls() == [URLS[1]]  # the next request goes elsewhere straight away
    processes.cut_streams = False
    assert process_of(router.generate(request_for(adapter))) == URLS[1]


def test_an_engine_error_is_raised_as_its_type_without_failover(
    router: InferenceRouter, processes: FakeProcesses
) -> None:
    with pytest.raises(UnknownAdapterError, match="not in the registry"):
        router.generate(request_for("ft:unknown"))
    assert sum(processes.attempts.values()) == 1
    assert router.healthy_urls() == URLS


def test_nothing_reachable_is_an_unavailable_error(router: InferenceRouter, processes: FakeProcesses) -> None:
    processes.down.update(URLS)
    with pytest.raises(wire.InferenceUnavailableError):
        router.generate(request_for(adapter_preferring(URLS[0])))
    assert processes.attempts == Counter(dict.fromkeys(URLS, 1))


def test_the_metrics_figures_are_summed_over_the_reachable_processes(
    router: InferenceRouter, processes: FakeProcesses
) -> None:
    assert router.pending_requests() == 2
    assert sorted(router.batch_sizes) == [1, 1, 2, 2]
    assert router.cache_counters() == AdapterCacheCounters(hits=6, loads=4, evictions=2)
    assert router.resident_adapter_count() == 4
    assert router.batching_figures() == BatchingFigures("continuous", 6, 2, 2000)
    assert processes.attempts == Counter(dict.fromkeys(URLS, 1))  # one fetch per process per scrape
