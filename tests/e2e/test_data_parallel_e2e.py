"""A 2-process job on a real `lorasp worker` (Celery prefork: the pool process is daemonic, so its ranks
must be subprocesses): it trains, a crash of the worker takes its ranks with it, and the replacement
worker resumes the job from its last checkpoint with 2 ranks again."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from e2e_stack import Stack, chat_rows, events_of, saved_checkpoint_steps, wait_for_end, wait_until

from lorasp_service.rank_processes import live_rank_pids

pytestmark = pytest.mark.services


def test_a_two_process_job_survives_its_worker_crashing_and_resumes_with_two_ranks(
    stack: Stack, worker: Path
) -> None:
    with stack.client() as client:
        # 96 steps of 2 ranks x 2 examples: long enough to crash mid-run, short enough to finish after
        file_id = stack.upload(client, chat_rows(32, words=40))
        job = stack.create_job(client, file_id, n_epochs=12, batch_size=4, processes=2)
        assert job["method"]["lorasp"]["hyperparameters"]["processes"] == 2
        wait_until(lambda: saved_checkpoint_steps(client, job["id"]), 120, f"a checkpoint of {job['id']}")
        assert len(live_rank_pids(job["id"])) == 1  # rank 1 beside rank 0 (the pool process)

        stack.kill_workers(signal.SIGKILL)  # the worker's process group: pool process and its rank
        wait_until(lambda: not live_rank_pids(job["id"]), 30, "the crashed worker's rank to be gone")
        stack.start_worker(LORASP_BROKER_VISIBILITY_TIMEOUT_SECONDS="6")

        done = wait_for_end(client, job["id"], 240)
        assert done["status"] == "succeeded", done["error"]
        resumed = [e for e in events_of(client, job["id"]) if (e.get("data") or {}).get("resumed_from_step")]
        assert resumed, "no event says the job resumed"
    assert stack.job_row(job["id"])["attempts"] == 2
    assert stack.count("adapters", job["id"]) == 1
    assert live_rank_pids(job["id"]) == []
