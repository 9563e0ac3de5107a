"""Continuous batching (as vLLM's scheduler does it): new requests join the running decode batch of their
base model at a step boundary, and rows leave as soon as they finish.

One thread loops: run the work other threads handed it (`call`), admit what fits from the wait queue
(first come, first served per base model: the first request that does not fit holds back the later ones
of its model, so a large request is never starved), prefill the newcomers and merge them into their
model's batch, then run one decode step of every running batch. Bounds: rows per batch, and KV-cache
bytes per batch counted for the worst case (every row running to max_tokens), so a running batch never
outgrows its budget.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from lorasp_core.serving import decode
from lorasp_core.serving.decode import DecodeRow, _RowState
from lorasp_core.serving.resident import ResidentModel
from lorasp_core.serving.running_batch import RunningBatch, kv_bytes_per_token, worst_case_kv_bytes
from lorasp_core.serving.text_stream import TextStream

logger = logging.getLogger("lorasp_core.serving")

T = TypeVar("T")


class EngineClosedError(RuntimeError):
    """The engine closed before this request finished."""


@dataclass
class WaitingRow:
    model: str
    row: DecodeRow


class ContinuousScheduler:
    def __init__(
        self, resolve: Callable[[str], ResidentModel], *, max_rows: int, max_kv_bytes: int | None
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if max_kv_bytes is not None and max_kv_bytes < 1:
            raise ValueError(f"max_kv_bytes must be >= 1, got {max_kv_bytes}")
        self._resolve = resolve
        self.max_rows = max_rows
        self.max_kv_bytes = max_kv_bytes
        self._waiting: deque[WaitingRow] = deque()
        self._calls: deque[tuple[Callable[[], object], Future[object]]] = deque()
        self._batches: dict[str, RunningBatch] = {}
        self._per_token: dict[str, int] = {}
        self._wake = threading.Condition()
        self._paused = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self.batch_sizes: list[int] = []  # rows of every admission (one prefill group), in order
        # Read by other threads for metrics; written by the scheduler thread only.
        self.running_rows = 0
        self.kv_cache_bytes = 0

    def check_fits(self, resident: ResidentModel, row: DecodeRow) -> None:
        """Refuse (ValueError) a request that could never be admitted: alone over the KV budget."""
        if self.max_kv_bytes is None:
            return
        need = self._bytes_per_token(resident) * (len(row.prompt_ids) + row.max_tokens)
        if need > self.max_kv_bytes:
            raise ValueError(
                f"prompt ({len(row.prompt_ids)} tokens) + max_tokens ({row.max_tokens}) need {need} bytes of "
                f"KV cache, more than the serving limit of {self.max_kv_bytes}"
            )

    def _bytes_per_token(self, resident: ResidentModel) -> int:
        if resident.name not in self._per_token:
            self._per_token[resident.name] = kv_bytes_per_token(resident)
        return self._per_token[resident.name]

    def submit(self, model: str, row: DecodeRow) -> None:
        with self._wake:
            if self._closing:
                raise EngineClosedError("the serving engine is closed")
            self._waiting.append(WaitingRow(model, row))
            self._ensure_thread()
            self._wake.notify()

    def call(self, work: Callable[[], T]) -> T:
        """Run `work` on the scheduler's thread at the next step boundary and return its result.

        Why: torch's CPU kernels run on an OpenMP team per calling thread, and while a second team is
        alive (even idle) GNU OpenMP throttles its spin-waits, so every parallel op of every team wakes
        its workers by futex: ~1.5x slower forwards on a 2-core machine (benchmarks/results/serving.md).
        Forwards outside the running batch (a one-off batch, a classification) therefore run here too,
        so one thread does all of an engine's decoding. Runs even while paused; inline on the thread.
        """
        if threading.current_thread() is self._thread:
            return work()
        future: Future[object] = Future()
        with self._wake:
            if self._closing:
                raise EngineClosedError("the serving engine is closed")
            self._calls.append((work, future))
            self._ensure_thread()
            self._wake.notify()
        result: T = future.result()  # type: ignore[assignment]  # the future holds work()'s own value
        return result

    def _run_calls(self) -> None:
        """Run the work queued by now; work queued meanwhile waits for the next step boundary, so a
        steady flow of calls (classifications) never starves the running decode batches."""
        with self._wake:
            calls, self._calls = list(self._calls), deque()
        for work, future in calls:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(work())
                except BaseException as error:  # handed to the caller, who raises it
                    future.set_exception(error)

    def pending(self) -> int:
        return len(self._waiting)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold admissions and steps while inside (requests still queue up): deterministic composition."""
        with self._wake:
            self._paused = True
        try:
            yield
        finally:
            with self._wake:
                self._paused = False
                self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lorasp-continuous-batcher", daemon=True)
            self._thread.start()

    def _admissible(self) -> dict[str, list[DecodeRow]]:
        """Take off the queue what fits now (called with the lock held)."""
        taken: dict[str, list[DecodeRow]] = {}
        blocked: set[str] = set()
        remaining: deque[WaitingRow] = deque()
        for waiting in self._waiting:
            if waiting.model in blocked or not self._fits(waiting, taken.get(waiting.model, [])):
                blocked.add(waiting.model)
                remaining.append(waiting)
                continue
            taken.setdefault(waiting.model, []).append(waiting.row)
        self._waiting = remaining
        return taken

    def _fits(self, waiting: WaitingRow, admitted: list[DecodeRow]) -> bool:
        batch = self._batches.get(waiting.model)
        running = len(batch.rows) if batch is not None else 0
        if running + len(admitted) + 1 > self.max_rows:
            return False
        if self.max_kv_bytes is None:
            return True
        try:
            resident = batch.resident if batch is not None else self._resolve(waiting.model)
            per_token = self._bytes_per_token(resident)
        except Exception:  # the model cannot be resolved: admit, the prefill reports the error to the row
            return True
        finals = (batch.final_lengths() if batch is not None else []) + [
            len(r.prompt_ids) + r.max_tokens for r in [*admitted, waiting.row]
        ]
        return worst_case_kv_bytes(per_token, finals) <= self.max_kv_bytes

    def _loop(self) -> None:
        while True:
            with self._wake:
                while (
                    not self._closing
                    and not self._calls
                    and (self._paused or (not self._waiting and not self._batches))
                ):
                    self._wake.wait()
                if self._closing:
                    break
            self._run_calls()
            with self._wake:
                if self._paused:
                    continue
                admissions = self._admissible()
            for model, rows in admissions.items():
                self._admit(model, rows)
            for model, batch in list(self._batches.items()):
                try:
                    batch.step()
                except Exception as error:  # the shared forward failed: its rows fail, the loop goes on
                    logger.exception("decode step of %d rows on %r failed", len(batch.rows), model)
                    batch.fail_all(error)
                if not batch.rows:
                    del self._batches[model]
            self._publish()
        self._shutdown()

    def _admit(self, model: str, rows: list[DecodeRow]) -> None:
        self.batch_sizes.append(len(rows))
        try:
            batch = self._batches.get(model) or RunningBatch(self._resolve(model))
        except Exception as error:  # the base model is gone: these rows fail
            logger.exception("admitting %d rows on %r failed", len(rows), model)
            for row in rows:
                _fail_row(row, error)
            return
        batch.admit(rows)
        if batch.rows:
            self._batches[model] = batch

    def _publish(self) -> None:
        self.running_rows = sum(len(batch.rows) for batch in self._batches.values())
        self.kv_cache_bytes = sum(batch.kv_bytes() for batch in self._batches.values())

    def _shutdown(self) -> None:
        """Closing: every running and waiting row fails with EngineClosedError, so no reader hangs."""
        error = EngineClosedError("the serving engine closed before this request finished")
        for batch in self._batches.values():
            batch.fail_all(error)
        self._batches.clear()
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
            calls, self._calls = list(self._calls), deque()
        for item in waiting:
            _fail_row(item.row, error)
        for _, future in calls:
            future.set_exception(EngineClosedError("the serving engine closed before this work ran"))
        self._publish()


def _fail_row(row: DecodeRow, error: BaseException) -> None:
    """Fail a row that has no decode state yet (it never reached a batch)."""
    decode._fail(row, _RowState(TextStream(None, None), None), error)
