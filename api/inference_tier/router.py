"""InferenceRouter: the API's ServingBackend when `LORASP_INFERENCE_URLS` names inference processes.

Each call goes to the processes in the rendezvous order of its (base model, adapter id), healthy ones
first, so an adapter keeps hitting the process that has it hot. A process whose connection fails
before it answered is marked down for a short backoff and the call moves to the next one; a periodic
health check (GET /health) brings it back. A stream cut after it started fails that request alone.
The router holds no model: adapters travel by registry id, never by path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from api.inference_tier import wire
from api.inference_tier.remote_stream import RemoteGenerationStream
from api.inference_tier.rendezvous import rendezvous_order, routing_key
from lorasp_core.serving import (
    AdapterCacheCounters,
    AdapterInfo,
    BatchingFigures,
    ClassificationResult,
    GenerationRequest,
    GenerationStream,
    UnknownAdapterError,
)
from lorasp_core.serving.adapter_files import ParsedAdapter, read_peft_adapter
from lorasp_service.settings import Settings

logger = logging.getLogger("api.inference_tier")

FIGURES_TTL_SECONDS = 1.0  # one metrics scrape reads four figures: fetch them from the processes once


class InferenceRouter:
    def __init__(self, settings: Settings, *, transport: httpx.BaseTransport | None = None) -> None:
        if not settings.inference_urls or settings.inference_secret is None:
            raise ValueError("InferenceRouter needs LORASP_INFERENCE_URLS and LORASP_INFERENCE_SECRET")
        self.urls = [url.rstrip("/") for url in settings.inference_urls]
        self._down_until = dict.fromkeys(self.urls, 0.0)  # time.monotonic() before which a url is skipped
        self._lock = threading.Lock()
        self._backoff = settings.inference_retry_backoff_seconds
        self._health_interval = settings.inference_health_interval_seconds
        self._max_rank = settings.serving_max_rank
        self._batching = settings.serving_batching
        self._storage_root = settings.blob_dir.resolve()
        self._base_of: dict[str, str] = {}  # adapter id -> base model, as routed (pin and info need it)
        self._figures: tuple[float, list[dict[str, Any]]] | None = None
        timeout = httpx.Timeout(
            settings.inference_read_timeout_seconds, connect=settings.inference_connect_timeout_seconds
        )
        headers = {"Authorization": f"Bearer {settings.inference_secret.get_secret_value()}"}
        self._client = httpx.Client(headers=headers, timeout=timeout, transport=transport)
        self._stop = threading.Event()
        self._health = threading.Thread(
            target=self._check_health_forever, name="inference-health", daemon=True
        )
        if self._health_interval > 0:
            self._health.start()

    # process health ---------------------------------------------------------------------------------
    def healthy_urls(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return [url for url in self.urls if self._down_until[url] <= now]

    def _mark_down(self, url: str, why: object) -> None:
        with self._lock:
            was_up = self._down_until[url] <= time.monotonic()
            self._down_until[url] = time.monotonic() + self._backoff
        if was_up:
            logger.warning("inference process %s is down (%s); routing around it", url, why)

    def _mark_up(self, url: str) -> None:
        with self._lock:
            was_down = self._down_until[url] > time.monotonic()
            self._down_until[url] = 0.0
        if was_down:
            logger.info("inference process %s is back", url)

    def check_health(self) -> None:
        """Probe every process not in its backoff: up on an answer, down on a failure or an error."""
        now = time.monotonic()
        for url in self.urls:
            with self._lock:
                if self._down_until[url] > now:
                    continue
            try:
                response = self._client.get(url + "/health", timeout=self._client.timeout.connect)
                ok = response.status_code == 200
            except httpx.HTTPError as error:
                self._mark_down(url, type(error).__name__)
                continue
            if ok:
                self._mark_up(url)
            else:
                self._mark_down(url, f"health answered {response.status_code}")

    def _check_health_forever(self) -> None:
        while not self._stop.wait(self._health_interval):
            try:
                self.check_health()
            except Exception:  # never let the health thread die
                logger.exception("inference health check failed")

    def _order(self, key: str) -> list[str]:
        """Every process in the key's rendezvous order: the healthy ones first, then the others as a
        last resort (their backoff may be stale)."""
        order = rendezvous_order(key, self.urls)
        healthy = set(self.healthy_urls())
        return [url for url in order if url in healthy] + [url for url in order if url not in healthy]

    # requests ---------------------------------------------------------------------------------------
    def _send(
        self, key: str, method: str, path: str, body: Any = None, *, stream: bool = False
    ) -> tuple[str, httpx.Response]:
        """The first answer in the key's order; processes that cannot be reached are skipped."""
        for url in self._order(key):
            request = self._client.build_request(method, url + path, json=body)
            try:
                response = self._client.send(request, stream=stream)
            except httpx.TransportError as error:  # nothing was answered: the next process may be
                self._mark_down(url, type(error).__name__)
                continue
            self._mark_up(url)
            if response.status_code != 200:
                response.read()
                response.close()
                raise _error_of(response)
            return url, response
        raise wire.InferenceUnavailableError(
            f"no inference process answered ({', '.join(self.urls)})", retry_after_s=max(1.0, self._backoff)
        )

    def _json(self, key: str, method: str, path: str, body: Any = None) -> Any:
        return self._send(key, method, path, body)[1].json()

    def _each_healthy(self, method: str, path: str, body: Any = None) -> Iterator[tuple[str, Any]]:
        """(url, answer) of every healthy process that answers; an engine error is the answer."""
        for url in self.healthy_urls():
            try:
                response = self._client.request(method, url + path, json=body)
            except httpx.TransportError as error:
                self._mark_down(url, type(error).__name__)
                continue
            yield url, (response.json() if response.status_code == 200 else _error_of(response))

    def _adapter_key(self, adapter_id: str) -> str:
        return routing_key(self._base_of.get(adapter_id, ""), adapter_id)

    # ServingBackend -----------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> GenerationStream:
        if request.adapter_id is not None:
            self._base_of[request.adapter_id] = request.model
        key = routing_key(request.model, request.adapter_id)
        url, response = self._send(key, "POST", "/generate", wire.to_wire(request), stream=True)
        return RemoteGenerationStream(
            response, url, lambda: self._mark_down(url, "stream cut"), choices=request.n
        )

    def classify(self, model: str, adapter_id: str | None, texts: list[str]) -> list[ClassificationResult]:
        body = {"model": model, "adapter_id": adapter_id, "texts": texts}
        data = self._json(routing_key(model, adapter_id), "POST", "/classify", body)
        return wire.from_wire(list[ClassificationResult], data)

    def check_adapter(
        self, adapter_id: str, path: Path | str, base_model: str
    ) -> tuple[ParsedAdapter, tuple[str, ...] | None]:
        """Parse here (no model needed); the base-model checks run on the base model's process, which
        reads the same directory from the shared storage."""
        parsed = read_peft_adapter(adapter_id, path, max_rank=self._max_rank)
        resolved = Path(path).resolve()
        if self._storage_root not in resolved.parents:
            raise ValueError(
                f"adapter {adapter_id!r} is not in the shared storage, so no process can read it"
            )
        body = {
            "adapter_id": adapter_id,
            "storage_key": resolved.relative_to(self._storage_root).as_posix(),
            "base_model": base_model,
        }
        labels = self._json(routing_key(base_model, None), "POST", "/adapters/check", body)["label_names"]
        return parsed, None if labels is None else tuple(labels)

    def load_adapter(
        self,
        adapter_id: str,
        path: Path | str,
        base_model: str,
        *,
        pin: bool = False,
        owner: str | None = None,
    ) -> AdapterInfo:
        """`path` and `owner` are the registry's: the process looks the id up itself."""
        self._base_of[adapter_id] = base_model
        data = self._json(
            routing_key(base_model, adapter_id), "POST", f"/adapters/{adapter_id}/load", {"pin": pin}
        )
        return wire.from_wire(AdapterInfo, data)

    def _on_holder(self, adapter_id: str, method: str, path: str, body: Any = None) -> Any:
        """The answer of the first process, in the adapter's order, that has the adapter."""
        healthy = set(self.healthy_urls())
        for url in rendezvous_order(self._adapter_key(adapter_id), healthy):
            try:
                response = self._client.request(method, url + path, json=body)
            except httpx.TransportError as error:
                self._mark_down(url, type(error).__name__)
                continue
            if response.status_code == 200:
                return response.json()
            refusal = _error_of(response)
            if not isinstance(refusal, UnknownAdapterError):
                raise refusal
        raise UnknownAdapterError(f"adapter {adapter_id!r} is not resident on any inference process")

    def pin_adapter(self, adapter_id: str, pinned: bool = True) -> None:
        self._on_holder(adapter_id, "POST", f"/adapters/{adapter_id}/pin", {"pinned": pinned})

    def adapter_info(self, adapter_id: str) -> AdapterInfo:
        return wire.from_wire(AdapterInfo, self._on_holder(adapter_id, "GET", f"/adapters/{adapter_id}/info"))

    def unload_adapter(self, adapter_id: str) -> None:
        """Unload everywhere (after a failover a second process may have it too)."""
        answers = [answer for _, answer in self._each_healthy("POST", f"/adapters/{adapter_id}/unload")]
        if not any(not isinstance(answer, Exception) for answer in answers):
            raise UnknownAdapterError(f"adapter {adapter_id!r} is not loaded on any inference process")

    def loaded_adapters(self) -> list[AdapterInfo]:
        infos: dict[str, AdapterInfo] = {}
        for _, answer in self._each_healthy("GET", "/adapters"):
            if not isinstance(answer, Exception):
                for info in wire.from_wire(list[AdapterInfo], answer):
                    infos.setdefault(info.adapter_id, info)
        return sorted(infos.values(), key=lambda info: info.last_used)

    # figures (metrics) --------------------------------------------------------------------------------
    def _process_figures(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        if self._figures is None or now - self._figures[0] > FIGURES_TTL_SECONDS:
            answers = [a for _, a in self._each_healthy("GET", "/figures") if not isinstance(a, Exception)]
            self._figures = (now, answers)
        return self._figures[1]

    @property
    def batch_sizes(self) -> list[int]:
        return [size for figures in self._process_figures() for size in figures["batch_sizes"]]

    def pending_requests(self) -> int:
        return sum(int(figures["pending_requests"]) for figures in self._process_figures())

    def cache_counters(self) -> AdapterCacheCounters:
        counters = [
            wire.from_wire(AdapterCacheCounters, f["cache_counters"]) for f in self._process_figures()
        ]
        return AdapterCacheCounters(
            hits=sum(c.hits for c in counters),
            loads=sum(c.loads for c in counters),
            evictions=sum(c.evictions for c in counters),
        )

    def batching_figures(self) -> BatchingFigures:
        """Rows, waiting requests and KV bytes summed over the processes; the mode is this deployment's
        setting (the processes are started with the same)."""
        figures = [wire.from_wire(BatchingFigures, f["batching"]) for f in self._process_figures()]
        return BatchingFigures(
            mode=self._batching,
            running_rows=sum(f.running_rows for f in figures),
            waiting_requests=sum(f.waiting_requests for f in figures),
            kv_cache_bytes=sum(f.kv_cache_bytes for f in figures),
        )

    def resident_adapter_count(self) -> int:
        return sum(int(figures["resident_adapters"]) for figures in self._process_figures())

    def close(self) -> None:
        self._stop.set()
        if self._health.is_alive():
            self._health.join(timeout=5)
        self._client.close()


def _error_of(response: httpx.Response) -> Exception:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict) and wire.ERROR_KEY in payload:
        return wire.error_from_wire(payload[wire.ERROR_KEY])
    return wire.InferenceProcessError(
        f"inference process answered {response.status_code}: {response.text[:200]}"
    )
