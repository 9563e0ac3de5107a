"""Resume checkpoints of a job: only the newest few are kept, and none once the job has succeeded.

A checkpoint is a row (`fine_tuning_checkpoints`) plus a blob directory under `jobs/<job id>/`. A job
only ever resumes from its newest checkpoint, so older ones are deleted as new ones are written
(`Settings.checkpoints_kept` remain), all of them once the job succeeded (its adapter is what remains),
and a job's whole blob folder when the model it produced is deleted. Rows go first, in their own
commit, then the blobs: a crash in between leaves an unreferenced blob (which the orphan sweep may
collect), never a row that points at nothing.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from lorasp_service.db import session_scope
from lorasp_service.orm import Checkpoint
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

log = logging.getLogger(__name__)


def job_blob_key(job_id: str) -> str:
    """The storage folder of everything a job writes besides its adapter (its checkpoints)."""
    return f"jobs/{job_id}"


def checkpoint_key(job_id: str, step: int) -> str:
    return f"{job_blob_key(job_id)}/checkpoints/step-{step}"


def prune_checkpoints(settings: Settings, storage: BlobStorage, job_id: str, keep: int) -> list[int]:
    """Delete all but the `keep` newest checkpoints of the job; returns the steps deleted."""
    with session_scope(settings) as session:
        old = list(
            session.scalars(
                select(Checkpoint)
                .where(Checkpoint.job_id == job_id)
                .order_by(Checkpoint.step.desc())
                .offset(keep)
            )
        )
        keys, steps = [row.storage_key for row in old], [row.step for row in old]
        for row in old:
            session.delete(row)
        session.commit()
    for key in keys:
        storage.delete(key)
    return steps


def discard_after_success(settings: Settings, storage: BlobStorage, job_id: str) -> None:
    """All checkpoints of a job that succeeded (its adapter is registered): nothing will resume it."""
    try:
        prune_checkpoints(settings, storage, job_id, keep=0)
        storage.delete(job_blob_key(job_id))
    except Exception:  # noqa: BLE001 - the job has succeeded; a leftover blob must not change that
        log.exception("job %s: could not delete its checkpoints", job_id)


def forget_job_checkpoints(session: Session, job_id: str) -> list[str]:
    """Delete the job's checkpoint rows in `session` (the caller commits); returns the blob keys to
    delete after the commit (used when the job's model is deleted)."""
    for row in session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)):
        session.delete(row)
    session.flush()
    return [job_blob_key(job_id)]
