"""ServingEngine: batched multi-adapter generation and classification on top of AdapterManager.

Generation requests from many threads go to a scheduler thread, each row with its own adapter slot:
continuous batching (the default: requests join the running batch of their base model at a step
boundary) or static batching (a window's requests decode as one batch, to its end). Classification
runs one mixed forward directly.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypeVar

from lorasp_core.serving.cache import CacheEntry
from lorasp_core.serving.classification import base_label_names, classify_rows
from lorasp_core.serving.continuous import ContinuousScheduler
from lorasp_core.serving.decode import DecodeRow, decode_batch, vocab_size
from lorasp_core.serving.generation import GenerationStream, render_prompt_ids, request_grammar
from lorasp_core.serving.grammar import GrammarSpec, compile_grammar
from lorasp_core.serving.manager import AdapterManager
from lorasp_core.serving.resident import ResidentModel
from lorasp_core.serving.sampling import derived_seed
from lorasp_core.serving.scheduler import BatchScheduler, PendingRequest
from lorasp_core.serving.types import (
    BaseModelBundle,
    BatchingFigures,
    BatchingMode,
    ClassificationResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    ServingOverloadedError,
    TemplateBudget,
)

logger = logging.getLogger("lorasp_core.serving")

T = TypeVar("T")


@dataclass
class _Job:
    """One generation request on its way through the scheduler."""

    row: DecodeRow
    stream: GenerationStream | None
    adapter_id: str | None
    started: float
    released: bool = False  # the adapter was handed back (when the row finished, or the batch failed)


class ServingEngine(AdapterManager):
    """The contract of docs/interfaces.md: adapter management (inherited) plus generate / classify."""

    def __init__(
        self,
        base_loader: Callable[[str], BaseModelBundle],
        *,
        max_adapters: int = 8,
        max_adapter_bytes: int | None = None,
        max_rank: int = 64,
        batch_window_ms: float = 5.0,
        max_batch_size: int = 32,
        max_pinned_per_owner: int | None = None,
        max_resident_per_owner: int | None = None,
        template_budget: TemplateBudget | None = None,
        batching: BatchingMode = "continuous",
        max_kv_cache_bytes: int | None = None,
        max_waiting_requests: int | None = None,
    ) -> None:
        super().__init__(
            base_loader,
            max_adapters=max_adapters,
            max_adapter_bytes=max_adapter_bytes,
            max_rank=max_rank,
            max_pinned_per_owner=max_pinned_per_owner,
            max_resident_per_owner=max_resident_per_owner,
            template_budget=template_budget,
        )
        if batching not in ("continuous", "static"):
            raise ValueError(f"batching must be 'continuous' or 'static', got {batching!r}")
        if max_waiting_requests is not None and max_waiting_requests < 0:
            raise ValueError(f"max_waiting_requests must be >= 0, got {max_waiting_requests}")
        self.batching: BatchingMode = batching
        self.max_waiting_requests = max_waiting_requests
        self._submit_lock = threading.Lock()  # the wait-queue bound is checked and the request queued at once
        self._recent_request_s = 1.0  # moving mean of finished requests' duration: the Retry-After estimate
        self._scheduler = BatchScheduler(
            self._run_scheduled_batch, batch_window_s=batch_window_ms / 1000.0, max_batch_size=max_batch_size
        )
        # max_batch_size bounds the rows of a running batch too (with max_kv_cache_bytes).
        self._continuous = ContinuousScheduler(
            self.base_model, max_rows=max_batch_size, max_kv_bytes=max_kv_cache_bytes
        )

    # generation -------------------------------------------------------------------------------------
    def _prepare(
        self, request: GenerationRequest, stream: GenerationStream | None
    ) -> tuple[ResidentModel, list[_Job]]:
        """Validate and render a request into one job per choice (`n`), each holding the adapter."""
        request.validate()
        resident, entry = self._acquire(request.model, request.adapter_id)
        held = 1
        try:
            if resident.task != "causal-lm":
                raise ValueError(f"base model {request.model!r} is not a causal LM")
            template = entry.chat_template if entry else None
            prompt_ids = render_prompt_ids(resident, request, template, self.template_budget)
            limit = getattr(getattr(resident.model, "config", None), "max_position_embeddings", None)
            if limit is not None and len(prompt_ids) + request.max_tokens > int(limit):
                raise ValueError(
                    f"prompt ({len(prompt_ids)} tokens) + max_tokens ({request.max_tokens}) exceeds "
                    f"the model's context of {limit} tokens"
                )
            grammar = request_grammar(request)
            if grammar is not None:  # compile (or find cached) now: a bad schema fails before queueing
                compile_grammar(resident.tokenizer, vocab_size(resident), grammar)
            for _ in range(request.n - 1):  # every choice holds the adapter until its row finishes
                self._acquire(request.model, request.adapter_id)
                held += 1
        except Exception:
            for _ in range(held):
                self._release(request.adapter_id)
            raise
        jobs = [
            self._job(request, stream, prompt_ids, entry.slot if entry else 0, index, grammar)
            for index in range(request.n)
        ]
        return resident, jobs

    def _job(
        self,
        request: GenerationRequest,
        stream: GenerationStream | None,
        prompt_ids: list[int],
        slot: int,
        index: int,
        grammar: GrammarSpec | None,
    ) -> _Job:
        row = DecodeRow(
            prompt_ids=prompt_ids,
            slot=slot,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            seed=derived_seed(request.seed, index),
            ignore_eos=request.ignore_eos,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            logprobs=request.logprobs,
            top_logprobs=request.top_logprobs if request.logprobs else 0,
            grammar=grammar,  # built once per request in _prepare
            index=index,
            cancelled=(lambda: stream.cancelled) if stream else None,
        )
        job = _Job(row, stream, request.adapter_id, time.perf_counter())
        row.emit = lambda chunk: self._deliver(job, chunk)
        row.fail = lambda error: self._fail(job, error)
        return job

    def _fail(self, job: _Job, error: BaseException) -> None:
        """This row alone failed mid-batch: free its adapter (counting nothing) and tell its reader."""
        if not job.released:
            job.released = True
            self._release(job.adapter_id)
        if job.stream is not None:
            job.stream.fail(error)

    def _deliver(self, job: _Job, chunk: GenerationChunk) -> None:
        """Forward a chunk; on the final one, first free the adapter and record the request's metrics,
        so a reader that saw the end also sees the adapter released (unload/evict can proceed)."""
        if chunk.finish_reason is not None and not job.released:
            job.released = True
            elapsed = time.perf_counter() - job.started
            self._recent_request_s = 0.8 * self._recent_request_s + 0.2 * elapsed
            self._release(job.adapter_id, chunk.token_count, elapsed * 1e3)
        if job.stream is not None:
            job.stream.put(chunk)

    def generate(self, request: GenerationRequest) -> GenerationStream:
        """Queue a request for the next batch; iterate the result for GenerationChunks (SSE-friendly).

        Validation errors (unknown adapter, bad parameters, prompt too long) raise here, before queueing.
        """
        stream = GenerationStream(choices=request.n)
        resident, jobs = self._prepare(request, stream)
        try:
            with self._submit_lock:
                waiting = self.pending_requests()
                if self.max_waiting_requests is not None and waiting >= self.max_waiting_requests:
                    retry_after = max(1.0, math.ceil(self._recent_request_s))
                    raise ServingOverloadedError(waiting, self.max_waiting_requests, retry_after)
                if self.batching == "continuous":
                    for job in jobs:
                        self._continuous.check_fits(resident, job.row)
                for job in jobs:
                    if self.batching == "continuous":
                        self._continuous.submit(request.model, job.row)
                    else:
                        self._scheduler.submit(PendingRequest(request.model, job))
        except Exception:
            for job in jobs:
                if not job.released:
                    job.released = True
                    self._release(request.adapter_id)
            raise
        return stream

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Run `requests` (same base model) as exactly one batch, on the decoding thread (continuous
        batching: between two steps of the running batches; see ContinuousScheduler.call), else on a
        thread that ends with it (openmp_threads).

        One result per choice: a request with n > 1 gives n results in a row (their `index` 0..n-1).
        A row that fails alone does not stop the others; the first such error is raised after the batch.
        """
        if len({r.model for r in requests}) != 1:
            raise ValueError("generate_batch needs a non-empty list of requests for one base model")
        prepared: list[tuple[ResidentModel, list[_Job]]] = []
        try:
            for request in requests:
                prepared.append(self._prepare(request, None))
        except Exception:
            for _, jobs in prepared:
                for job in jobs:
                    self._release(job.adapter_id)
            raise
        resident, all_jobs = prepared[0][0], [job for _, jobs in prepared for job in jobs]
        outcomes = self._on_decoding_thread(resident, lambda: self._run_jobs(resident, all_jobs))
        results: list[GenerationResult] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        return results

    def _on_decoding_thread(self, resident: ResidentModel, work: Callable[[], T]) -> T:
        """Forwards outside the running batches go to the thread that decodes them (one OpenMP team);
        static batching has no step boundary to run them at: a thread that ends with them instead. A
        caller inside `active_slots` holds the model's lock, which that thread would wait for: inline."""
        if self.batching == "continuous" and not resident.held_here():
            return self._continuous.call(work)
        return self._torch_work(resident, work)

    def _run_scheduled_batch(self, model: str, pending: list[PendingRequest]) -> None:
        jobs: list[_Job] = [p.payload for p in pending]
        try:
            self._run_jobs(self.base_model(model), jobs)
        except Exception as error:
            for job in jobs:
                if job.stream is not None:
                    job.stream.fail(error)

    def _run_jobs(self, resident: ResidentModel, jobs: list[_Job]) -> list[GenerationResult | BaseException]:
        results: list[GenerationResult | BaseException] | None = None
        try:
            results = decode_batch(resident, [job.row for job in jobs])
            return results
        finally:
            for job in jobs:
                if not job.released:  # failed batch: free the adapters, count nothing
                    job.released = True
                    self._release(job.adapter_id)
            logger.info(
                "batch on %r: %d requests, %d adapters, %d tokens",
                resident.name,
                len(jobs),
                len({job.adapter_id for job in jobs}),
                sum(r.completion_tokens for r in results or [] if isinstance(r, GenerationResult)),
            )

    # scheduler controls -----------------------------------------------------------------------------
    @property
    def batch_sizes(self) -> list[int]:
        """Rows of every batch the static scheduler ran, or of every group the continuous one admitted
        (prefilled together and merged into the running batch): observability and tests."""
        if self.batching == "continuous":
            return list(self._continuous.batch_sizes)
        return list(self._scheduler.batch_sizes)

    def pending_requests(self) -> int:
        """Requests waiting for a batch (continuous: waiting to join one)."""
        if self.batching == "continuous":
            return self._continuous.pending()
        return self._scheduler.pending()

    def batching_figures(self) -> BatchingFigures:
        if self.batching == "continuous":
            running, kv_bytes = self._continuous.running_rows, self._continuous.kv_cache_bytes
        else:
            running, kv_bytes = self._scheduler.running_rows, 0
        return BatchingFigures(self.batching, running, self.pending_requests(), kv_bytes)

    def scheduler_paused(self) -> AbstractContextManager[None]:
        """Requests queue up but no batch starts (continuous: no admission and no step) inside the block:
        deterministic batch composition."""
        if self.batching == "continuous":
            return self._continuous.paused()
        return self._scheduler.paused()

    def close(self) -> None:
        self._scheduler.close()
        self._continuous.close()

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
            texts = [text for _, text in items]
            return self._on_decoding_thread(resident, lambda: classify_rows(resident, texts, slots, labels))
        finally:
            latency_ms = (time.perf_counter() - started) * 1e3
            for adapter_id in acquired:
                self._release(adapter_id, 0, latency_ms)
