"""A job's per-step metrics as OpenAI names them: in metrics events, checkpoint metrics, step_metrics.csv.

Each training step becomes one metrics event (`metrics_data`): OpenAI's `step`, `train_loss`,
`train_mean_token_accuracy`, `valid_loss` / `valid_mean_token_accuracy` (the fixed validation sample,
when evaluated at that step) and `full_valid_loss` / `full_valid_mean_token_accuracy` (the whole
validation file, at the end of the last epochs), a DPO job's `rewards/chosen`, `rewards/rejected`,
`rewards/accuracies` and `rewards/margins` (TRL's names), plus lorasp's `total_steps`, `epoch`,
`learning_rate`, `tokens_per_second`, `elapsed_seconds`, `eta_seconds` and `trained_tokens`. At the end of a
job the events become its result file `step_metrics.csv` (`result_file`).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lorasp_core.train_config import DPO_METRICS, ProgressEvent
from lorasp_service.ids import new_id
from lorasp_service.jobs.events import EventType
from lorasp_service.orm import File, Job, JobEvent
from lorasp_service.storage import BlobStorage

RESULTS_PURPOSE = "fine-tune-results"
CSV_COLUMNS = (
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
    "learning_rate",
    "tokens_per_second",
)
# What OpenAI's checkpoint `metrics` carry (a subset of a step's metrics).
CHECKPOINT_METRICS = CSV_COLUMNS[:7]


def _evaluated(prefix: str, metrics: dict[str, float] | None) -> dict[str, float]:
    if metrics is None:
        return {}
    accuracy = metrics["mean_token_accuracy"]
    return {f"{prefix}_loss": metrics["loss"], f"{prefix}_mean_token_accuracy": accuracy}


def metrics_data(event: ProgressEvent) -> dict[str, Any]:
    """The `data` of one step's metrics event."""
    data: dict[str, Any] = {
        "step": event.step,
        "train_loss": event.train_loss,
        "train_mean_token_accuracy": event.train_mean_token_accuracy,
        **_evaluated("valid", event.eval_metrics),
        **_evaluated("full_valid", event.full_eval_metrics),
        "total_steps": event.total_steps,
        "epoch": event.epoch,
        "learning_rate": event.learning_rate,
        "tokens_per_second": event.tokens_per_second,
        "elapsed_seconds": event.elapsed_seconds,
        "eta_seconds": event.eta_seconds,
        "trained_tokens": event.trained_tokens,
        **(event.objective_metrics or {}),
    }
    return data


def checkpoint_metrics(event: ProgressEvent) -> dict[str, Any]:
    data = metrics_data(event)
    return {name: data[name] for name in CHECKPOINT_METRICS if data.get(name) is not None}


def step_rows(session: Session, job_id: str) -> list[dict[str, Any]]:
    """One row per step, from the job's metrics events; a step run again after a resume or a worker's
    death keeps its latest values."""
    statement = select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == EventType.METRICS)
    by_step: dict[int, dict[str, Any]] = {}
    for data in session.scalars(statement.order_by(JobEvent.seq)):
        if isinstance(data, dict) and isinstance(data.get("step"), int):
            by_step[data["step"]] = data
    return [by_step[step] for step in sorted(by_step)]


def to_csv(rows: list[dict[str, Any]]) -> bytes:
    """CSV with a header; a metric not measured at a step is an empty cell. A DPO job's rows add its
    reward columns."""
    columns = CSV_COLUMNS + tuple(name for name in DPO_METRICS if any(name in row for row in rows))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: "" if row.get(name) is None else row[name] for name in columns})
    return buffer.getvalue().encode()


def result_file(session: Session, storage: BlobStorage, job: Job) -> File:
    """Write the job's step_metrics.csv into storage and return its (unsaved) file row: the caller adds
    it in the transaction that finishes the job, or deletes the blob if that transaction fails."""
    file_id = new_id("file")
    key = f"files/{job.tenant_id}/{file_id}.csv"
    size, digest = storage.write_bytes(key, to_csv(step_rows(session, job.id)))
    return File(
        id=file_id,
        tenant_id=job.tenant_id,
        filename="step_metrics.csv",
        purpose=RESULTS_PURPOSE,
        bytes=size,
        sha256=digest,
        storage_key=key,
        status="processed",
        data_format=None,
        stats={},
    )
