"""A background thread that gathers concurrent generation requests into batches (static batching).

The thread takes the first waiting request, then everything that arrives within `batch_window_s`
(up to `max_batch_size`), groups the requests by base model and runs each group as one decode batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("lorasp_core.serving")

_CLOSE = object()


@dataclass
class PendingRequest:
    """A submitted request; `payload` is opaque to the scheduler (the engine's decode row)."""

    model: str
    payload: Any


class BatchScheduler:
    def __init__(
        self,
        run_batch: Callable[[str, list[PendingRequest]], None],
        *,
        batch_window_s: float,
        max_batch_size: int,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._run_batch = run_batch
        self.batch_window_s = max(0.0, batch_window_s)
        self.max_batch_size = max_batch_size
        self._queue: queue.Queue[Any] = queue.Queue()
        self._resume = threading.Event()
        self._resume.set()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batch_sizes: list[int] = []  # every batch run, in order: observable batching for tests/metrics
        self._holding = 0  # a request taken off the queue while paused: still counts as pending
        self.running_rows = 0  # rows of the batch decoding now (metrics)

    def submit(self, request: PendingRequest) -> None:
        self._ensure_thread()
        self._queue.put(request)

    def pending(self) -> int:
        return self._queue.qsize() + self._holding

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold batching while inside (requests still queue up): makes batch composition deterministic."""
        self._resume.clear()
        try:
            yield
        finally:
            self._resume.set()

    def close(self) -> None:
        if self._thread is not None:
            self._resume.set()
            self._queue.put(_CLOSE)
            self._thread.join(timeout=30)
            self._thread = None

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="lorasp-batch-scheduler", daemon=True)
                self._thread.start()

    def _collect(self) -> tuple[list[PendingRequest], bool]:
        """One window's worth of requests; the bool says whether close() was requested."""
        self._resume.wait()
        first = self._queue.get()
        if first is _CLOSE:
            return [], True
        self._holding = 1
        self._resume.wait()  # paused after the first arrived: keep collecting once resumed
        self._holding = 0
        batch: list[PendingRequest] = [first]
        deadline = time.perf_counter() + self.batch_window_s
        while len(batch) < self.max_batch_size:
            timeout = deadline - time.perf_counter()
            try:
                item = self._queue.get_nowait() if timeout <= 0 else self._queue.get(timeout=timeout)
            except queue.Empty:
                break
            if item is _CLOSE:
                self._queue.put(_CLOSE)  # finish this batch first, then stop
                break
            batch.append(item)
        return batch, False

    def _loop(self) -> None:
        while True:
            batch, closing = self._collect()
            if closing:
                return
            by_model: dict[str, list[PendingRequest]] = {}
            for request in batch:
                by_model.setdefault(request.model, []).append(request)
            for model, requests in by_model.items():
                self.batch_sizes.append(len(requests))
                self.running_rows = len(requests)
                try:
                    self._run_batch(model, requests)
                except Exception:  # run_batch reports errors to its requests; never kill the thread
                    logger.exception("batch of %d requests on %r failed", len(requests), model)
                finally:
                    self.running_rows = 0
