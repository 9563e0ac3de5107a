"""The stale-job sweep and checkpoint pruning on PostgreSQL + Redis, called directly (no worker runs):
what the sweep re-sends and where, and which checkpoints (rows and blobs) survive."""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import select, update

from lorasp_service import checkpoints, jobs, work_dirs
from lorasp_service.db import session_scope
from lorasp_service.orm import Checkpoint, Job
from lorasp_service.queue import resume_queue_name
from lorasp_service.recovery import RESEND_AFTER_STALE_PERIODS, StaleJobSweeper
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

pytestmark = pytest.mark.services

DEAD_WORKER = "some-other-host:4242"  # another host: only the heartbeat's age says it is dead


def make_stale(settings: Settings, job_id: str) -> None:
    jobs.claim_job(settings, job_id, DEAD_WORKER)
    stale = jobs.utcnow() - timedelta(seconds=settings.heartbeat_stale_seconds + 1)
    with session_scope(settings) as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=stale))
        session.commit()


def messages_for(settings: Settings, queue: str, job_id: str) -> int:
    """How many run_job messages for `job_id` wait in `queue` (kombu keeps a Redis list per queue)."""
    client = redis.Redis.from_url(settings.broker_url)
    items = client.lrange(settings.broker_key_prefix + queue, 0, -1)
    return sum(job_id in json.loads(item)["headers"]["argsrepr"] for item in items)


def test_the_sweep_sends_a_dead_job_to_the_resume_queue_once_per_dead_lease(
    settings: Settings, job_id: str
) -> None:
    mine = settings.model_copy(update={"queue_name": f"sweep-{secrets.token_hex(4)}"})
    sweeper = StaleJobSweeper(mine)
    resume = resume_queue_name(mine)
    try:
        jobs.claim_job(mine, job_id, DEAD_WORKER)
        assert job_id not in sweeper.sweep_once()  # a fresh heartbeat: its worker may be alive
        make_stale(mine, job_id)
        assert job_id in sweeper.sweep_once()
        assert job_id not in sweeper.sweep_once()  # already sent for this dead lease: no pile-up
        assert messages_for(mine, resume, job_id) == 1
        assert messages_for(mine, mine.queue_name, job_id) == 0
        # Nobody took it over for a long time (a lost message?): it is sent again.
        mark, sent_at = sweeper.recently_sent[job_id]
        sweeper.recently_sent[job_id] = (
            mark,
            sent_at - RESEND_AFTER_STALE_PERIODS * mine.heartbeat_stale_seconds,
        )
        assert job_id in sweeper.sweep_once()
        # Another attempt took it over and died too: a new dead lease, sent at once.
        assert jobs.claim_job(mine, job_id, "host-b:7").outcome == jobs.ClaimOutcome.TAKEN_OVER
        assert job_id not in sweeper.sweep_once()  # alive again: forgotten
        assert job_id not in sweeper.recently_sent
        make_stale(mine, job_id)
        assert job_id in sweeper.sweep_once()
        assert messages_for(mine, resume, job_id) == 3
    finally:
        client = redis.Redis.from_url(mine.broker_url)
        client.delete(mine.broker_key_prefix + resume, mine.broker_key_prefix + mine.queue_name)


def add_checkpoints(settings: Settings, storage: BlobStorage, job_id: str, steps: list[int]) -> None:
    for step in steps:
        key = checkpoints.checkpoint_key(job_id, step)
        storage.write_bytes(f"{key}/state.pt", b"weights")
        jobs.register_checkpoint(settings, job_id, step, key, {"step": step})


def checkpoint_steps(settings: Settings, job_id: str) -> list[int]:
    with session_scope(settings) as session:
        return sorted(session.scalars(select(Checkpoint.step).where(Checkpoint.job_id == job_id)))


def folders(storage: BlobStorage, job_id: str) -> list[str]:
    root = storage.path(checkpoints.job_blob_key(job_id)) / "checkpoints"
    return sorted(path.name for path in root.iterdir()) if root.is_dir() else []


def test_pruning_keeps_the_newest_checkpoints_rows_and_blobs(settings: Settings, job_id: str) -> None:
    storage = BlobStorage(settings.blob_dir)
    add_checkpoints(settings, storage, job_id, [30, 10, 50, 20, 40])

    deleted = checkpoints.prune_checkpoints(settings, storage, job_id, keep=2)

    assert sorted(deleted) == [10, 20, 30]
    assert checkpoint_steps(settings, job_id) == [40, 50]
    assert folders(storage, job_id) == ["step-40", "step-50"]
    # A take-over still resumes from the newest one.
    make_stale(settings, job_id)
    claim = jobs.claim_job(settings, job_id, "host-b:7")
    assert (claim.resume_step, claim.resume_key) == (50, checkpoints.checkpoint_key(job_id, 50))


def test_a_succeeded_job_keeps_no_checkpoint(settings: Settings, job_id: str) -> None:
    storage = BlobStorage(settings.blob_dir)
    add_checkpoints(settings, storage, job_id, [10, 20])

    checkpoints.discard_after_success(settings, storage, job_id)

    assert checkpoint_steps(settings, job_id) == []
    assert not storage.path(checkpoints.job_blob_key(job_id)).exists()


def test_work_folders_of_dead_or_finished_attempts_are_swept(
    tmp_path: Path, settings: Settings, job_id: str
) -> None:
    mine = settings.model_copy(update={"home": tmp_path})
    old = time.time() - mine.heartbeat_stale_seconds - 5

    def folder(name: str, touched: float = old) -> Path:
        path = tmp_path / "work" / name
        (path / "checkpoints").mkdir(parents=True)
        os.utime(path, (touched, touched))
        return path

    assert jobs.claim_job(mine, job_id, DEAD_WORKER).attempt == 1
    current = folder(f"{job_id}-attempt-1")
    earlier = folder(f"{job_id}-attempt-0")
    unknown = folder("ftjob-gone-attempt-3")
    fresh = folder("ftjob-just-claimed-attempt-1", touched=time.time())
    other = folder("not-an-attempt")
    assert sorted(work_dirs.sweep_work_dirs(mine)) == sorted([earlier.name, unknown.name])
    assert current.is_dir() and fresh.is_dir() and other.is_dir()
    assert not earlier.exists() and not unknown.exists()

    with session_scope(mine) as session:  # the job ends: its last attempt's folder goes too
        session.execute(update(Job).where(Job.id == job_id).values(status="cancelled"))
        session.commit()
    assert work_dirs.sweep_work_dirs(mine) == [current.name]
