"""ServingEngine: resident base models, an LRU of hot-loaded adapters in slots, batched generation.

Modelled on vLLM's LoRA manager: explicit capacity (adapters = slots), touch on hit, LRU eviction that
zeroes the slot and drops the adapter's tensors, pinning, and load errors wrapped with context.
Adapters that are evicted stay *known* (id -> path), so a later request hot-loads them again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from lorasp_core.serving.adapter_files import read_peft_adapter
from lorasp_core.serving.cache import AdapterCache, CacheEntry
from lorasp_core.serving.classification import adapter_label_names, base_label_names, classify_rows
from lorasp_core.serving.decode import DecodeRow, decode_batch
from lorasp_core.serving.generation import GenerationStream, render_prompt_ids
from lorasp_core.serving.resident import ResidentModel
from lorasp_core.serving.scheduler import BatchScheduler, PendingRequest
from lorasp_core.serving.types import (
    AdapterInfo,
    AdapterLoadError,
    BaseModelBundle,
    ClassificationResult,
    GenerationRequest,
    GenerationResult,
    UnknownAdapterError,
)

logger = logging.getLogger("lorasp_core.serving")


@dataclass
class _Job:
    """One generation request on its way through the scheduler."""

    row: DecodeRow
    stream: GenerationStream | None
    adapter_id: str | None
    started: float


class ServingEngine:
    def __init__(
        self,
        base_loader: Callable[[str], BaseModelBundle],
        *,
        max_adapters: int = 8,
        max_adapter_bytes: int | None = None,
        max_rank: int = 64,
        batch_window_ms: float = 5.0,
        max_batch_size: int = 32,
    ) -> None:
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        self._base_loader = base_loader
        self.max_rank = max_rank
        self._cache = AdapterCache(max_adapters, max_adapter_bytes)
        self._residents: dict[str, ResidentModel] = {}
        self._known: dict[str, tuple[Path, str]] = {}  # every loaded adapter id -> (path, base model)
        self._lock = threading.RLock()  # adapter bookkeeping; never held across a base-model load
        self._base_load_lock = threading.Lock()
        self._scheduler = BatchScheduler(
            self._run_scheduled_batch, batch_window_s=batch_window_ms / 1000.0, max_batch_size=max_batch_size
        )

    # base models ------------------------------------------------------------------------------------
    def base_model(self, name: str) -> ResidentModel:
        """The resident copy of base model `name`, loaded through `base_loader` on first use."""
        with self._lock:
            resident = self._residents.get(name)
        if resident is not None:
            return resident
        with self._base_load_lock:
            with self._lock:
                resident = self._residents.get(name)
            if resident is None:
                started = time.perf_counter()
                resident = ResidentModel(name, self._base_loader(name), self._cache.max_adapters + 1)
                with self._lock:
                    self._residents[name] = resident
                logger.info("base model %r resident (%.0f ms)", name, (time.perf_counter() - started) * 1e3)
        return resident

    def resident_models(self) -> list[str]:
        with self._lock:
            return list(self._residents)

    # adapters ---------------------------------------------------------------------------------------
    def load_adapter(
        self, adapter_id: str, path: Path | str, base_model: str, *, pin: bool = False
    ) -> AdapterInfo:
        """Hot-load a PEFT adapter directory into a free slot (evicting LRU adapters if needed).

        Already resident from the same path: a cache hit (touch; `pin=True` pins it). On any
        AdapterLoadError / AdapterCacheFullError the engine is exactly as before.
        """
        started = time.perf_counter()
        path = Path(path)
        with self._lock:
            entry = self._cache.get(adapter_id)
            if entry is not None and Path(entry.path) == path and entry.base_model == base_model:
                entry.pinned = entry.pinned or pin
                self._cache.touch(adapter_id)
                return self._cache.info(adapter_id)
        parsed = read_peft_adapter(adapter_id, path, max_rank=self.max_rank)
        resident = self.base_model(base_model)
        resident.validate(parsed)
        labels = adapter_label_names(resident, parsed)
        with self._lock:
            existing = self._cache.get(adapter_id)
            if existing is not None and existing.in_use:
                raise AdapterLoadError(
                    adapter_id, str(path), "cannot replace an adapter that is serving requests"
                )
            victims = self._cache.plan_admission(parsed.nbytes, replacing=adapter_id if existing else None)
            if existing is not None:
                self._evict(adapter_id, reason="replaced")
            for victim in victims:
                self._evict(victim, reason="least recently used")
            slot = resident.take_slot()
            resident.install(slot, parsed)
            load_ms = (time.perf_counter() - started) * 1e3
            self._cache.add(
                CacheEntry(
                    adapter_id=adapter_id,
                    base_model=base_model,
                    path=str(path),
                    task=parsed.task,
                    rank=parsed.rank,
                    nbytes=parsed.nbytes,
                    slot=slot,
                    pinned=pin,
                    loaded_at=time.time(),
                    load_ms=load_ms,
                    label_names=labels,
                    chat_template=parsed.chat_template,
                )
            )
            self._known[adapter_id] = (path, base_model)
            info = self._cache.info(adapter_id)
        logger.info(
            "adapter %r loaded on %r: slot %d, rank %d, %d bytes, %.1f ms",
            adapter_id,
            base_model,
            slot,
            info.rank,
            info.bytes,
            load_ms,
        )
        return info

    def _evict(self, adapter_id: str, *, reason: str) -> None:
        entry = self._cache.remove(adapter_id)
        self._residents[entry.base_model].release_slot(entry.slot)
        stats = self._cache.stats.get(adapter_id)
        logger.info(
            "adapter %r evicted (%s): slot %d freed, %d bytes; hits=%d requests=%d",
            adapter_id,
            reason,
            entry.slot,
            entry.nbytes,
            stats.hits if stats else 0,
            stats.requests if stats else 0,
        )

    def unload_adapter(self, adapter_id: str) -> None:
        """Forget an adapter; its slot is freed now, or when the requests using it finish."""
        with self._lock:
            if adapter_id not in self._known and adapter_id not in self._cache:
                raise UnknownAdapterError(f"adapter {adapter_id!r} is not loaded")
            self._known.pop(adapter_id, None)
            entry = self._cache.get(adapter_id)
            if entry is not None and entry.in_use:
                entry.pinned, entry.unload_when_idle = False, True
            elif entry is not None:
                self._evict(adapter_id, reason="unloaded")
                self._cache.forget(adapter_id)

    def pin_adapter(self, adapter_id: str, pinned: bool = True) -> None:
        with self._lock:
            entry = self._cache.get(adapter_id)
            if entry is None:
                raise UnknownAdapterError(f"adapter {adapter_id!r} is not resident")
            entry.pinned = pinned

    def loaded_adapters(self) -> list[AdapterInfo]:
        """Resident adapters, least recently used first, with their metrics."""
        with self._lock:
            return [self._cache.info(adapter_id) for adapter_id in self._cache.entries]

    def adapter_info(self, adapter_id: str) -> AdapterInfo:
        with self._lock:
            if adapter_id not in self._cache:
                raise UnknownAdapterError(f"adapter {adapter_id!r} is not resident")
            return self._cache.info(adapter_id)

    def _acquire(self, base_model: str, adapter_id: str | None) -> tuple[ResidentModel, CacheEntry | None]:
        """Resident base + adapter marked in use (reloaded if it was evicted): not evictable mid-request."""
        resident = self.base_model(base_model)
        if adapter_id is None:
            return resident, None
        for _ in range(3):  # an eviction can race between reload and use; retry
            with self._lock:
                entry = self._cache.get(adapter_id)
                if entry is not None and not entry.unload_when_idle:
                    if entry.base_model != base_model:
                        raise ValueError(
                            f"adapter {adapter_id!r} belongs to {entry.base_model!r}, not {base_model!r}"
                        )
                    self._cache.touch(adapter_id)
                    entry.in_use += 1
                    return resident, entry
                known = self._known.get(adapter_id)
            if known is None:
                raise UnknownAdapterError(f"adapter {adapter_id!r} is not loaded")
            if known[1] != base_model:
                raise ValueError(f"adapter {adapter_id!r} belongs to {known[1]!r}, not {base_model!r}")
            self.load_adapter(adapter_id, known[0], base_model)
        raise RuntimeError(f"adapter {adapter_id!r} was evicted again while being reloaded")

    def _release(self, adapter_id: str | None, tokens: int, latency_ms: float) -> None:
        if adapter_id is None:
            return
        with self._lock:
            self._cache.record_request(adapter_id, tokens, latency_ms)
            entry = self._cache.get(adapter_id)
            if entry is None:
                return
            entry.in_use -= 1
            if entry.in_use == 0 and entry.unload_when_idle:
                self._evict(adapter_id, reason="unloaded")
                self._cache.forget(adapter_id)

    def slot_of(self, adapter_id: str) -> int:
        return self.adapter_info(adapter_id).slot

    @contextmanager
    def active_slots(self, base_model: str, row_slots: torch.Tensor) -> Iterator[ResidentModel]:
        """Low-level: run your own forwards on the resident base with per-row adapter slots."""
        resident = self.base_model(base_model)
        with resident.active_slots(row_slots):
            yield resident

    # generation -------------------------------------------------------------------------------------
    def _prepare(
        self, request: GenerationRequest, stream: GenerationStream | None
    ) -> tuple[ResidentModel, _Job]:
        request.validate()
        resident, entry = self._acquire(request.model, request.adapter_id)
        try:
            if resident.task != "causal-lm":
                raise ValueError(f"base model {request.model!r} is not a causal LM")
            prompt_ids = render_prompt_ids(
                resident.tokenizer, request, entry.chat_template if entry else None
            )
            limit = getattr(getattr(resident.model, "config", None), "max_position_embeddings", None)
            if limit is not None and len(prompt_ids) + request.max_tokens > int(limit):
                raise ValueError(
                    f"prompt ({len(prompt_ids)} tokens) + max_tokens ({request.max_tokens}) exceeds "
                    f"the model's context of {limit} tokens"
                )
        except Exception:
            self._release(request.adapter_id, 0, 0.0)
            raise
        row = DecodeRow(
            prompt_ids=prompt_ids,
            slot=entry.slot if entry else 0,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            seed=request.seed,
            emit=stream.put if stream else None,
            cancelled=(lambda: stream.cancelled) if stream else None,
        )
        return resident, _Job(row, stream, request.adapter_id, time.perf_counter())

    def generate(self, request: GenerationRequest) -> GenerationStream:
        """Queue a request for the next batch; iterate the result for GenerationChunks (SSE-friendly).

        Validation errors (unknown adapter, bad parameters, prompt too long) raise here, before queueing.
        """
        stream = GenerationStream()
        _, job = self._prepare(request, stream)
        self._scheduler.submit(PendingRequest(request.model, job))
        return stream

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Run `requests` (same base model) as exactly one batch in the calling thread."""
        if len({r.model for r in requests}) != 1:
            raise ValueError("generate_batch needs a non-empty list of requests for one base model")
        prepared: list[tuple[ResidentModel, _Job]] = []
        try:
            for request in requests:
                prepared.append(self._prepare(request, None))
        except Exception:
            for _, job in prepared:
                self._release(job.adapter_id, 0, 0.0)
            raise
        return self._run_jobs(prepared[0][0], [job for _, job in prepared])

    def _run_scheduled_batch(self, model: str, pending: list[PendingRequest]) -> None:
        jobs: list[_Job] = [p.payload for p in pending]
        try:
            self._run_jobs(self.base_model(model), jobs)
        except Exception as error:
            for job in jobs:
                if job.stream is not None:
                    job.stream.fail(error)

    def _run_jobs(self, resident: ResidentModel, jobs: list[_Job]) -> list[GenerationResult]:
        results: list[GenerationResult] | None = None
        try:
            results = decode_batch(resident, [job.row for job in jobs])
            return results
        finally:
            now = time.perf_counter()
            for i, job in enumerate(jobs):
                tokens = results[i].completion_tokens if results is not None else 0
                self._release(job.adapter_id, tokens, (now - job.started) * 1e3)
            logger.info(
                "batch on %r: %d requests, %d adapters, %d tokens",
                resident.name,
                len(jobs),
                len({job.adapter_id for job in jobs}),
                sum(r.completion_tokens for r in results or []),
            )

    # scheduler controls -----------------------------------------------------------------------------
    @property
    def batch_sizes(self) -> list[int]:
        """Size of every batch the scheduler ran (observability and tests)."""
        return list(self._scheduler.batch_sizes)

    def pending_requests(self) -> int:
        return self._scheduler.pending()

    def scheduler_paused(self) -> AbstractContextManager[None]:
        """Requests queue up but no batch starts inside the block: deterministic batch composition."""
        return self._scheduler.paused()

    def close(self) -> None:
        self._scheduler.close()

    # classification ---------------------------------------------------------------------------------
    def classify(self, model: str, adapter_id: str | None, texts: list[str]) -> list[ClassificationResult]:
        return self.classify_batch(model, [(adapter_id, text) for text in texts])

    def classify_batch(
        self, model: str, items: Sequence[tuple[str | None, str]]
    ) -> list[ClassificationResult]:
        """Classify (adapter_id, text) pairs in one forward: a mixed-adapter batch, each row its own head."""
        if not items:
            return []
        started = time.perf_counter()
        acquired: list[str | None] = []
        try:
            resident = self.base_model(model)
            entries: dict[str | None, CacheEntry | None] = {}
            for adapter_id, _ in items:
                if adapter_id not in entries:
                    entries[adapter_id] = self._acquire(model, adapter_id)[1]
                    acquired.append(adapter_id)
            base_labels = base_label_names(resident)
            slots: list[int] = []
            labels: list[tuple[str, ...]] = []
            for adapter_id, _ in items:
                entry = entries[adapter_id]
                slots.append(entry.slot if entry is not None else 0)
                labels.append(entry.label_names or base_labels if entry is not None else base_labels)
            return classify_rows(resident, [text for _, text in items], slots, labels)
        finally:
            latency_ms = (time.perf_counter() - started) * 1e3
            for adapter_id in acquired:
                self._release(adapter_id, 0, latency_ms)
