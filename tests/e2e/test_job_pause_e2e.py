"""Pause / resume through the whole stack with the official `openai` client: a running job pauses at a
checkpoint and frees its worker, resumes on another worker from that checkpoint, and ends with exactly the
adapter of an uninterrupted run with the same seed. Also the claim outcomes a pause leads to."""

from __future__ import annotations

import io
import secrets
import tarfile
import time
from datetime import timedelta
from pathlib import Path

import openai
import pytest
import torch
from e2e_stack import Stack, chat_rows, insert_queued_job, jsonl, wait_until
from safetensors.torch import load_file
from sqlalchemy import update

from lorasp_service import jobs
from lorasp_service.db import session_scope
from lorasp_service.orm import Job
from lorasp_service.settings import Settings

pytestmark = pytest.mark.services

# 16 rows, batch 2, 20 epochs: 160 steps, so the pause (asked after the step-10 checkpoint) lands mid-run.
HYPERPARAMETERS = {"n_epochs": 20, "batch_size": 2}


def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(api_key=stack.api_key, base_url=stack.base_url + "/v1", max_retries=0, timeout=60)


def wait_for_status(client: openai.OpenAI, job_id: str, statuses: tuple[str, ...], timeout: float) -> str:
    def current() -> str | None:
        status = client.fine_tuning.jobs.retrieve(job_id).status
        return status if status in statuses else None

    return str(wait_until(current, timeout, f"job {job_id} to be {' or '.join(statuses)}", interval=0.2))


def adapter_tensors(stack: Stack, model_id: str, into: Path) -> dict[str, torch.Tensor]:
    with stack.client() as http:
        download = http.get(f"/adapters/{model_id}/download")
    assert download.status_code == 200, download.text
    with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as archive:
        archive.extractall(into, filter="data")
    return load_file(str(into / "adapter_model.safetensors"))


def test_a_paused_job_resumes_on_another_worker_and_ends_bit_exact(
    stack: Stack, worker: Path, tmp_path: Path
) -> None:
    client = sdk(stack)
    training = client.files.create(
        file=("t.jsonl", io.BytesIO(jsonl(chat_rows(16, words=40)))), purpose="fine-tune"
    )
    method = {"type": "lorasp", "lorasp": {"hyperparameters": HYPERPARAMETERS}}
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama", training_file=training.id, seed=3, method=method
    )  # type: ignore[arg-type]
    wait_until(lambda: stack.resume_checkpoints(job.id), 120, "the first checkpoint")

    asked = client.fine_tuning.jobs.pause(job.id)
    assert asked.status in ("running", "paused")
    wait_for_status(client, job.id, ("paused",), 30)
    paused = client.fine_tuning.jobs.retrieve(job.id)
    assert paused.status == "paused" and paused.fine_tuned_model is None
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))  # every page
    pause_event = next(event for event in events if event.message == "Job paused")
    pause_step = pause_event.data["step"]  # type: ignore[index]
    assert 10 <= pause_step < 160
    assert pause_step in stack.resume_checkpoints(job.id)  # the pause wrote its checkpoint
    row = stack.job_row(job.id)
    assert (row["worker_id"], row["pause_requested"]) == (None, False)  # the worker let go of it

    # The worker that paused it is gone; a fresh one continues it.
    stack.kill_workers()
    stack.start_worker()
    reference = client.fine_tuning.jobs.create(
        model="tiny-random-llama", training_file=training.id, seed=3, method=method
    )  # type: ignore[arg-type]
    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status == "queued"

    deadline = time.monotonic() + 300
    for job_id in (job.id, reference.id):
        status = wait_for_status(
            client, job_id, ("succeeded", "failed", "cancelled"), max(1.0, deadline - time.monotonic())
        )
        assert status == "succeeded", client.fine_tuning.jobs.retrieve(job_id).error
    messages = [event.message for event in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "Job resumed" in messages
    assert f"Resuming training from the checkpoint at step {pause_step}" in messages
    assert stack.job_row(job.id)["attempts"] == 2

    finished = client.fine_tuning.jobs.retrieve(job.id)
    uninterrupted = client.fine_tuning.jobs.retrieve(reference.id)
    assert finished.trained_tokens == uninterrupted.trained_tokens
    paused_weights = adapter_tensors(stack, str(finished.fine_tuned_model), tmp_path / "paused")
    reference_weights = adapter_tensors(stack, str(uninterrupted.fine_tuned_model), tmp_path / "reference")
    assert paused_weights.keys() == reference_weights.keys() and paused_weights
    for name, tensor in reference_weights.items():
        assert torch.equal(paused_weights[name], tensor), name


@pytest.fixture
def queued_job(stack: Stack) -> str:
    tag = secrets.token_hex(6)
    return insert_queued_job(stack.settings, tag, f"pause-{tag}")


def test_the_message_of_a_paused_job_is_a_no_op_and_a_resumed_one_continues_from_its_checkpoint(
    stack: Stack, queued_job: str
) -> None:
    settings = stack.settings
    with session_scope(settings) as session:
        job = session.get(Job, queued_job)
        assert job is not None
        jobs.request_pause(session, job)
        session.commit()
    assert jobs.claim_job(settings, queued_job, "host-a:1").outcome == jobs.ClaimOutcome.PAUSED
    assert stack.job_row(queued_job)["status"] == "paused"
    assert queued_job not in jobs.orphaned_job_ids(settings)  # nothing re-sends a paused job

    key = f"jobs/{queued_job}/checkpoints/step-7"
    jobs.register_checkpoint(settings, queued_job, 7, key, {"step": 7})
    with session_scope(settings) as session:
        job = session.get(Job, queued_job)
        assert job is not None
        jobs.resume(session, job)
        session.commit()
    claim = jobs.claim_job(settings, queued_job, "host-a:1")
    assert (claim.outcome, claim.resume_step, claim.resume_key) == (jobs.ClaimOutcome.CLAIMED, 7, key)


def test_resumes_do_not_count_as_lost_workers(stack: Stack, queued_job: str) -> None:
    settings = stack.settings
    stale = jobs.utcnow() - timedelta(seconds=settings.heartbeat_stale_seconds + 1)
    dead = {"status": "running", "worker_id": "some-other-host:4242", "heartbeat_at": stale}
    # As many claims as the limit, but one of them followed a resume: one worker loss short of it.
    set_job(settings, queued_job, attempts=settings.max_job_attempts, resumes=1, **dead)
    assert jobs.claim_job(settings, queued_job, "host-b:7").outcome == jobs.ClaimOutcome.TAKEN_OVER
    set_job(settings, queued_job, attempts=settings.max_job_attempts + 1, resumes=1, **dead)
    assert jobs.claim_job(settings, queued_job, "host-c:8").outcome == jobs.ClaimOutcome.EXHAUSTED
    error = stack.job_row(queued_job)["error"]
    assert error["code"] == "worker_lost" and f"died {settings.max_job_attempts} times" in error["message"]


def set_job(settings: Settings, job_id: str, **values: object) -> None:
    with session_scope(settings) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        session.commit()


def test_a_worker_pauses_only_a_job_it_still_holds(stack: Stack, queued_job: str) -> None:
    settings = stack.settings
    claim = jobs.claim_job(settings, queued_job, "host-a:1")
    assert not jobs.pause_job(settings, queued_job, "host-b:2", claim.attempt, 5)  # not its lease
    assert stack.job_row(queued_job)["status"] == "running"
    assert jobs.pause_job(settings, queued_job, "host-a:1", claim.attempt, 5)
    row = stack.job_row(queued_job)
    assert (row["status"], row["worker_id"], row["heartbeat_at"]) == ("paused", None, None)
    assert not jobs.refresh_lease(settings, queued_job, "host-a:1", claim.attempt).held
