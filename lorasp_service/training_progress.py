"""What a running job reports while it trains: lease heartbeats, metrics events, checkpoints, cancel/pause.

`LeaseKeeper` is a daemon thread that refreshes the job's heartbeat every `heartbeat_interval_seconds`
(also while the model loads or a long step runs) and notices a lost lease or a cancel or pause request.
`JobProgressCallback` is the `TrainCallback` the training loop calls.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from lorasp_core.train_config import EvalScope, ProgressEvent, TrainCallback
from lorasp_service import checkpoints, jobs, step_metrics
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

log = logging.getLogger(__name__)

METRICS_FLUSH_INTERVAL_SECONDS = 1.0
CANCEL_POLL_INTERVAL_SECONDS = 0.5


class LeaseKeeper(threading.Thread):
    def __init__(self, settings: Settings, job_id: str, worker_id: str, attempt: int) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.settings, self.job_id, self.worker_id, self.attempt = settings, job_id, worker_id, attempt
        self.lost = False
        self.cancel_requested = False
        self.pause_requested = False
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.settings.heartbeat_interval_seconds):
            try:
                check = jobs.refresh_lease(self.settings, self.job_id, self.worker_id, self.attempt)
            except jobs.TRANSIENT_DB_ERRORS as error:
                log.warning("job %s: heartbeat failed (will retry): %s", self.job_id, error)
                continue
            self.cancel_requested = self.cancel_requested or check.cancel_requested
            self.pause_requested = self.pause_requested or check.pause_requested
            if not check.held:
                self.lost = True
                return

    def stop(self) -> None:
        self._stopped.set()


class JobProgressCallback(TrainCallback):
    """Every step becomes a metrics event. Events are written in batches (at most one transaction per
    `METRICS_FLUSH_INTERVAL_SECONDS`, and at once at the first and last step, an epoch's end, a full
    evaluation, a checkpoint or a stop), so fast steps cost no transaction each and none is dropped."""

    def __init__(
        self,
        settings: Settings,
        job_id: str,
        worker_id: str,
        attempt: int,
        keeper: LeaseKeeper,
        storage: BlobStorage,
    ) -> None:
        self.settings, self.job_id, self.worker_id, self.attempt = settings, job_id, worker_id, attempt
        self.keeper, self.storage = keeper, storage
        self.last_event: ProgressEvent | None = None
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._last_flush_at = time.monotonic()
        self._last_cancel_poll_at = 0.0

    def on_train_begin(self, total_steps: int) -> None:
        jobs.record_message(
            self.settings,
            self.job_id,
            f"Training started: {total_steps} steps",
            data={"total_steps": total_steps},
        )

    def on_progress(self, event: ProgressEvent) -> None:
        self.last_event = event
        message = f"Step {event.step}/{event.total_steps}: training loss={event.train_loss:.4f}"
        if event.eval_metrics is not None:
            message += f", validation loss={event.eval_metrics['loss']:.4f}"
        if event.full_eval_metrics is not None:
            message += f", full validation loss={event.full_eval_metrics['loss']:.4f}"
        self._pending.append((message, step_metrics.metrics_data(event)))
        edge = event.step <= 1 or event.step >= event.total_steps or event.full_eval_metrics is not None
        if edge or time.monotonic() - self._last_flush_at >= METRICS_FLUSH_INTERVAL_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the pending metrics events (a failed write keeps them for the next flush)."""
        if not self._pending or self.keeper.lost:
            return
        estimated_finish = None
        if self.last_event is not None and self.last_event.eta_seconds is not None:
            estimated_finish = jobs.utcnow() + timedelta(seconds=self.last_event.eta_seconds)
        try:
            held = jobs.record_metrics(
                self.settings, self.job_id, self.worker_id, self.attempt, self._pending, estimated_finish
            )
        except jobs.TRANSIENT_DB_ERRORS as error:
            log.warning("job %s: metrics not recorded yet: %s", self.job_id, error)
            return
        self._pending, self._last_flush_at = [], time.monotonic()
        if not held:
            self.keeper.lost = True

    def on_evaluate(self, step: int, metrics: dict[str, float], scope: EvalScope) -> None:
        if scope != "full":  # the sample's figures are in the step's metrics event
            return
        text = ", ".join(f"{name}={value:.4f}" for name, value in sorted(metrics.items()))
        jobs.record_message(
            self.settings,
            self.job_id,
            f"Full validation at step {step}: {text}",
            data={"step": step, "full_valid_metrics": dict(metrics)},
        )

    def on_epoch_end(self, step: int, epoch: int, model: Any) -> None:
        self.flush()  # the step's metrics come before the epoch's checkpoint model event

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.flush()
        if self.keeper.lost:
            return
        key = checkpoints.checkpoint_key(self.job_id, step)
        self.storage.put_dir(key, path)  # atomic: a checkpoint row never points at a partial copy
        metrics: dict[str, Any] = {"step": step}
        if self.last_event is not None:
            metrics["train_loss"] = self.last_event.train_loss
        jobs.register_checkpoint(self.settings, self.job_id, step, key, metrics)
        # Only the newest is ever resumed from: keep a few, not one per checkpoint interval.
        kept = self.settings.checkpoints_kept
        checkpoints.prune_checkpoints(self.settings, self.storage, self.job_id, kept)

    def should_stop(self) -> bool:
        """A cancel or a pause stops the loop alike (the trainer saves a checkpoint); the caller tells
        them apart by the keeper's flags."""
        keeper = self.keeper
        if keeper.lost or keeper.cancel_requested or keeper.pause_requested:
            self.flush()
            return True
        now = time.monotonic()
        if now - self._last_cancel_poll_at >= CANCEL_POLL_INTERVAL_SECONDS:
            self._last_cancel_poll_at = now
            try:
                check = jobs.stop_requests(self.settings, self.job_id)
                keeper.cancel_requested = check.cancel_requested
                keeper.pause_requested = check.pause_requested
            except jobs.TRANSIENT_DB_ERRORS as error:
                log.warning("job %s: cancel/pause poll failed: %s", self.job_id, error)
        stopping = keeper.cancel_requested or keeper.pause_requested
        if stopping:
            self.flush()
        return stopping
