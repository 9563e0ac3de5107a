"""The job lease on PostgreSQL: each claim outcome of `lorasp_service.jobs.claim_job`, and the fencing of
later writes on (worker_id, attempts). Called directly: this is the compare-and-set the task relies on."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from lorasp_service import jobs
from lorasp_service.db import session_scope
from lorasp_service.orm import Checkpoint, Job
from lorasp_service.settings import Settings

pytestmark = pytest.mark.services

DEAD_WORKER = "some-other-host:4242"  # another host: only the heartbeat's age tells whether it is alive


def set_job(settings: Settings, job_id: str, **values: object) -> None:
    with session_scope(settings) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        session.commit()


def get_job(settings: Settings, job_id: str) -> Job:
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_a_queued_job_is_claimed_once(settings: Settings, job_id: str) -> None:
    first = jobs.claim_job(settings, job_id, "host-a:1")
    second = jobs.claim_job(settings, job_id, DEAD_WORKER)
    assert (first.outcome, first.attempt) == (jobs.ClaimOutcome.CLAIMED, 1)
    assert second.outcome == jobs.ClaimOutcome.HELD  # fresh heartbeat of another host: a duplicate
    job = get_job(settings, job_id)
    assert (job.status, job.worker_id, job.attempts) == ("running", "host-a:1", 1)
    assert job.started_at is not None and job.heartbeat_at is not None


def test_unknown_finished_and_cancelled_jobs_are_not_run(settings: Settings, job_id: str) -> None:
    assert jobs.claim_job(settings, "ftjob-missing", "host-a:1").outcome == jobs.ClaimOutcome.NOT_FOUND
    set_job(settings, job_id, cancel_requested=True)
    assert jobs.claim_job(settings, job_id, "host-a:1").outcome == jobs.ClaimOutcome.CANCELLED
    assert get_job(settings, job_id).status == "cancelled"
    assert jobs.claim_job(settings, job_id, "host-a:1").outcome == jobs.ClaimOutcome.TERMINAL


def test_a_stale_lease_is_taken_over_and_resumes_from_the_last_checkpoint(
    settings: Settings, job_id: str
) -> None:
    jobs.claim_job(settings, job_id, DEAD_WORKER)
    stale = jobs.utcnow() - timedelta(seconds=settings.heartbeat_stale_seconds + 1)
    set_job(settings, job_id, heartbeat_at=stale)
    for step in (10, 20):
        key = f"jobs/{job_id}/checkpoints/step-{step}"
        jobs.register_checkpoint(settings, job_id, step, key, {"step": step})

    claim = jobs.claim_job(settings, job_id, "host-b:7")

    assert (claim.outcome, claim.attempt, claim.resume_step) == (jobs.ClaimOutcome.TAKEN_OVER, 2, 20)
    assert claim.resume_key == f"jobs/{job_id}/checkpoints/step-20"
    # The dead worker, should it come back, is fenced off: its writes no longer match the lease.
    assert not jobs.refresh_lease(settings, job_id, DEAD_WORKER, 1).held
    assert not jobs.finish_job(settings, job_id, DEAD_WORKER, 1, "failed", "late write")
    assert jobs.refresh_lease(settings, job_id, "host-b:7", 2).held
    assert get_job(settings, job_id).status == "running"
    with session_scope(settings) as session:
        assert session.query(Checkpoint).filter_by(job_id=job_id).count() == 2


def test_a_job_whose_workers_keep_dying_fails(settings: Settings, job_id: str) -> None:
    stale = jobs.utcnow() - timedelta(seconds=settings.heartbeat_stale_seconds + 1)
    set_job(
        settings,
        job_id,
        status="running",
        worker_id=DEAD_WORKER,
        heartbeat_at=stale,
        attempts=settings.max_job_attempts,
    )
    assert jobs.claim_job(settings, job_id, "host-b:7").outcome == jobs.ClaimOutcome.EXHAUSTED
    job = get_job(settings, job_id)
    assert job.status == "failed" and job.error is not None and job.error["code"] == "worker_lost"


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(
    settings: Settings, job_id: str
) -> None:
    # What a pool process killed mid-job leaves: a fresh heartbeat, but its pid no longer exists.
    jobs.claim_job(settings, job_id, jobs.worker_identity().rsplit(":", 1)[0] + ":999999999")
    assert jobs.claim_job(settings, job_id, jobs.worker_identity()).outcome == jobs.ClaimOutcome.TAKEN_OVER


def test_orphan_sweep_finds_dead_leases_and_only_with_include_queued_the_queued_jobs(
    settings: Settings, job_id: str
) -> None:
    # Redis mode sweeps running jobs whose lease is dead (their message waits out the visibility
    # timeout); queued jobs still have their message in Redis, so they are not re-sent there.
    assert job_id in jobs.orphaned_job_ids(settings, include_queued=True)
    assert job_id not in jobs.orphaned_job_ids(settings, include_queued=False)
    jobs.claim_job(settings, job_id, DEAD_WORKER)
    assert job_id not in jobs.orphaned_job_ids(settings, include_queued=False)  # heartbeat is fresh
    stale = jobs.utcnow() - timedelta(seconds=settings.heartbeat_stale_seconds + 1)
    set_job(settings, job_id, heartbeat_at=stale)
    assert job_id in jobs.orphaned_job_ids(settings, include_queued=False)
