"""Deployment figures read from the database at metrics-scrape time (no metrics library here).

Two cheap statements: job counts by status (the status column is indexed), and each running job's
latest metrics event (the (job_id, seq) index; only running jobs). Training speed comes from those
events because the worker process that measures it is not the process being scraped.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, and_, func, select

from lorasp_service.jobs import EventType, JobStatus
from lorasp_service.orm import Job, JobEvent


@dataclass(frozen=True)
class TrainingSpeed:
    job_id: str
    base_model: str
    tokens_per_second: float


def job_counts_by_status(connection: Connection) -> dict[str, int]:
    """Every status, with 0 for those no job has (a series should not vanish when it drops to 0)."""
    counts = {status.value: 0 for status in JobStatus}
    rows = connection.execute(select(Job.status, func.count()).group_by(Job.status))
    for status, count in rows:
        counts[status] = count
    return counts


def running_training_speeds(connection: Connection) -> list[TrainingSpeed]:
    """Tokens per second in the latest metrics event of every running job."""
    latest = (
        select(JobEvent.job_id, func.max(JobEvent.seq).label("seq"))
        .join(Job, Job.id == JobEvent.job_id)
        .where(Job.status == JobStatus.RUNNING.value, JobEvent.type == EventType.METRICS.value)
        .group_by(JobEvent.job_id)
        .subquery()
    )
    query = (
        select(JobEvent.job_id, Job.model, JobEvent.data)
        .join(latest, and_(latest.c.job_id == JobEvent.job_id, latest.c.seq == JobEvent.seq))
        .join(Job, Job.id == JobEvent.job_id)
        .order_by(JobEvent.job_id)
    )
    speeds = []
    for job_id, model, data in connection.execute(query):
        value = (data or {}).get("tokens_per_second")
        if isinstance(value, int | float):
            speeds.append(TrainingSpeed(job_id, model, float(value)))
    return speeds
