"""A worker SIGKILLed mid-job, through real processes on PostgreSQL + Redis: a surviving worker takes the
job over without any restart, the job resumes ahead of jobs that never started, and checkpoints are
pruned (while training, after success, and with the model)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from e2e_stack import Stack, chat_rows, events_of, wait_for_end, wait_until

from lorasp_service import checkpoints, jobs

pytestmark = pytest.mark.services

# 128 steps (checkpoint every 10): long enough to kill mid-run and to write several checkpoints.
LONG_ROWS, LONG_JOB = {"count": 32, "words": 60}, {"n_epochs": 16, "batch_size": 4}
SHORT_JOB = {"n_epochs": 1, "batch_size": 4}


def resumed_steps(client: httpx.Client, job_id: str) -> list[int]:
    return [
        event["data"]["resumed_from_step"]
        for event in events_of(client, job_id)
        if (event.get("data") or {}).get("resumed_from_step") is not None
    ]


def start_long_job(stack: Stack, client: httpx.Client, min_step: int) -> dict[str, Any]:
    """A long job, once it has written a checkpoint at `min_step` or later."""
    job = stack.create_job(client, stack.upload(client, chat_rows(**LONG_ROWS)), **LONG_JOB)
    wait_until(
        lambda: max(stack.resume_checkpoints(job["id"]) or [0]) >= min_step,
        120,
        f"a checkpoint of {job['id']} at step {min_step}",
    )
    return job


def test_a_surviving_worker_takes_over_a_dead_workers_job_without_a_restart(stack: Stack) -> None:
    stack.ensure_workers(2)
    kept = stack.settings.checkpoints_kept
    with stack.client() as client:
        job = start_long_job(stack, client, min_step=10 * (kept + 2))
        # Older resume checkpoints were pruned as new ones were written: rows and blobs alike.
        steps = stack.resume_checkpoints(job["id"])
        assert len(steps) <= kept + 1  # + 1: one may be registered but not yet pruned when we look
        assert min(steps) > 10
        holder = stack.worker_holding(job["id"])
        assert holder is not None, "no worker of ours holds the job"
        dead_id = stack.job_row(job["id"])["worker_id"]

        stack.sigkill(holder)  # and no restart: the other worker must notice on its own
        killed_at = time.monotonic()
        assert len(stack.live_workers()) == 1
        budget = stack.settings.heartbeat_stale_seconds + stack.settings.stale_sweep_interval_seconds + 20
        wait_until(
            lambda: stack.job_row(job["id"])["worker_id"] not in (None, dead_id),
            budget,
            "another worker to take the job over",
        )
        assert time.monotonic() - killed_at < budget

        done = wait_for_end(client, job["id"], 180)
        assert done["status"] == "succeeded", done["error"]
        assert resumed_steps(client, job["id"]) and all(
            step >= min(steps) for step in resumed_steps(client, job["id"])
        )
        # Succeeded: the adapter remains, no resume checkpoint does.
        assert stack.resume_checkpoints(job["id"]) == []
    assert stack.job_row(job["id"])["attempts"] == 2
    assert stack.count("adapters", job["id"]) == 1
    assert not stack.settings.blob_dir.joinpath(checkpoints.job_blob_key(job["id"])).exists()


def test_a_resumed_job_runs_before_jobs_that_never_started(stack: Stack) -> None:
    stack.ensure_workers(1)
    with stack.client() as client:
        resumed = start_long_job(stack, client, min_step=10)
        short_file = stack.upload(client, chat_rows(8, words=4))
        waiting = [stack.create_job(client, short_file, **SHORT_JOB)["id"] for _ in range(2)]
        holder = stack.worker_holding(resumed["id"])
        assert holder is not None
        stack.sigkill(holder)
        # Past the stale threshold, the replacement finds the lease dead at start whatever the pid says.
        time.sleep(stack.settings.heartbeat_stale_seconds + 0.5)
        assert all(stack.job_row(job_id)["status"] == "queued" for job_id in waiting)
        stack.start_worker()

        assert wait_for_end(client, resumed["id"], 240)["status"] == "succeeded"
        for job_id in waiting:
            assert wait_for_end(client, job_id, 120)["status"] == "succeeded"
        assert resumed_steps(client, resumed["id"])
    finished = stack.job_row(resumed["id"])["finished_at"]
    # One worker, one job at a time: the resumed job ran to its end before either waiting job started.
    assert all(stack.job_row(job_id)["started_at"] > finished for job_id in waiting)


def test_deleting_a_model_deletes_what_its_job_left_in_storage(stack: Stack) -> None:
    stack.ensure_workers(1)
    with stack.client() as client:
        job = stack.create_job(client, stack.upload(client, chat_rows(8, words=4)), **SHORT_JOB)
        done = wait_for_end(client, job["id"], 120)
        assert done["status"] == "succeeded", done["error"]
        # What a worker that died between success and clean-up leaves: a checkpoint row and its blob.
        key = checkpoints.checkpoint_key(job["id"], 1)
        (stack.settings.blob_dir / key).mkdir(parents=True)
        (stack.settings.blob_dir / key / "state.pt").write_bytes(b"weights")
        jobs.register_checkpoint(stack.settings, job["id"], 1, key, {"step": 1})
        assert stack.resume_checkpoints(job["id"]) == [1]

        response = client.delete(f"/models/{done['fine_tuned_model']}")
        assert response.status_code == 200, response.text

        assert stack.resume_checkpoints(job["id"]) == []
    assert not stack.settings.blob_dir.joinpath(checkpoints.job_blob_key(job["id"])).exists()
    assert not stack.settings.blob_dir.joinpath(f"adapters/{job['id']}").exists()
