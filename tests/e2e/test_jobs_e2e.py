"""Jobs through the whole stack: HTTP API -> Redis -> real worker processes -> PostgreSQL + storage."""

from __future__ import annotations

import hashlib
import io
import signal
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_stack import Stack, chat_rows, events_of, saved_checkpoint_steps, wait_for_end, wait_until
from safetensors.torch import load_file

from lorasp_service.queue import enqueue_job

pytestmark = pytest.mark.services

# 64 rows of ~60-word texts, batch 2, 50 epochs: 1600 steps of a few tens of ms on one CPU thread, long
# enough to still be running when the test acts on it.
LONG_JOB = {"n_epochs": 50, "batch_size": 2}


def long_rows() -> list[dict[str, Any]]:
    return chat_rows(64, words=60)


def first_checkpoint(client: httpx.Client, job_id: str) -> int:
    """The step of the job's first resume checkpoint, once it has one."""
    steps = wait_until(lambda: saved_checkpoint_steps(client, job_id), 90, f"a checkpoint of {job_id}")
    return int(steps[0])


def log_says(log_path: Path, text: str) -> bool:
    return text in log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def succeeded_job(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not stack.live_workers():
        stack.start_worker()
    with stack.client() as client:
        file_id = stack.upload(client, chat_rows(24, words=20))
        job = stack.create_job(client, file_id, n_epochs=4, batch_size=4)  # 24 steps
        return wait_for_end(client, job["id"], 120)


def test_job_trains_and_registers_a_downloadable_adapter(
    stack: Stack, succeeded_job: dict[str, Any], tmp_path: Path
) -> None:
    job = succeeded_job
    assert job["status"] == "succeeded", job["error"]
    model_id = job["fine_tuned_model"]
    assert model_id.startswith("ft:tiny-random-llama:lorasp:")
    assert job["trained_tokens"] > 0

    with stack.client() as client:
        events = events_of(client, job["id"])
        metrics = [event["data"] for event in events if event["type"] == "metrics"]
        assert metrics, "no metrics events"
        assert max(data["step"] for data in metrics) == metrics[0]["total_steps"] == 24
        assert all(data["train_loss"] > 0 and data["tokens_per_second"] > 0 for data in metrics)

        # It wrote checkpoints at steps 10 and 20, and deleted them once it succeeded (the adapter remains).
        created = {
            event["data"]["step"] for event in events if event["message"].startswith("Checkpoint created")
        }
        assert created == {10, 20}
        assert stack.resume_checkpoints(job["id"]) == [] and stack.checkpoint_dirs(job["id"]) == []

        model = client.get(f"/models/{model_id}")
        assert model.status_code == 200 and model.json()["id"] == model_id

        download = client.get(f"/adapters/{model_id}/download")
        assert download.status_code == 200, download.text
        assert download.headers["x-checksum-sha256"] == hashlib.sha256(download.content).hexdigest()

    assert stack.count("adapters", job["id"]) == 1
    with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as archive:
        archive.extractall(tmp_path / "adapter", filter="data")
    weights = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    lora_b = [tensor for name, tensor in weights.items() if "lora_B" in name]
    assert lora_b and any(float(tensor.abs().sum()) > 0 for tensor in lora_b), "B starts at zero: untrained"

    from lorasp_core import load_adapter, load_base_model

    base = load_base_model("tiny-random-llama")
    metadata = load_adapter(base.model, tmp_path / "adapter")
    assert metadata.base_model_name_or_path == "tiny-random-llama"
    assert metadata.freeze_ratio == 0.5


def test_cancel_stops_a_running_job_and_keeps_its_checkpoint(stack: Stack, worker: Path) -> None:
    with stack.client() as client:
        job = stack.create_job(client, stack.upload(client, long_rows()), **LONG_JOB)
        first_checkpoint(client, job["id"])
        response = client.post(f"/fine_tuning/jobs/{job['id']}/cancel")
        assert response.status_code == 200, response.text
        cancelled = wait_for_end(client, job["id"], 20)
        assert cancelled["status"] == "cancelled"
        assert cancelled["fine_tuned_model"] is None
        kept = stack.resume_checkpoints(job["id"])
        assert 1 <= len(kept) <= stack.settings.checkpoints_kept
        assert stack.checkpoint_dirs(job["id"]) == sorted(f"step-{step}" for step in kept)
        assert any("cancelled" in event["message"].lower() for event in events_of(client, job["id"]))
    assert stack.count("adapters", job["id"]) == 0


def test_redelivered_message_for_a_finished_job_is_a_no_op(
    stack: Stack, succeeded_job: dict[str, Any], worker: Path
) -> None:
    job_id = succeeded_job["id"]
    before = stack.job_row(job_id)
    event_count = stack.count("fine_tuning_job_events", job_id)

    enqueue_job(stack.settings, job_id)

    noop_logged = f"job {job_id}: nothing to do (terminal)"
    wait_until(lambda: log_says(worker, noop_logged), 60, "the redelivered task")
    after = stack.job_row(job_id)
    assert (after["status"], after["attempts"], after["fine_tuned_model"]) == (
        before["status"],
        before["attempts"],
        before["fine_tuned_model"],
    )
    assert stack.count("adapters", job_id) == 1
    assert stack.count("fine_tuning_job_events", job_id) == event_count


def test_duplicate_message_for_a_running_job_is_a_no_op(stack: Stack, worker: Path) -> None:
    with stack.client() as client:
        job = stack.create_job(client, stack.upload(client, long_rows()), **LONG_JOB)
        first_checkpoint(client, job["id"])
        holder = stack.job_row(job["id"])
        assert holder["status"] == "running"
        second_worker = stack.start_worker()  # idle: it is the one that receives the duplicate

        enqueue_job(stack.settings, job["id"])

        wait_until(
            lambda: any(
                log_says(path, f"job {job['id']}: nothing to do (held)") for path in (worker, second_worker)
            ),
            60,
            "the duplicate task",
        )
        now = stack.job_row(job["id"])
        assert (now["status"], now["attempts"], now["worker_id"]) == ("running", 1, holder["worker_id"])
        client.post(f"/fine_tuning/jobs/{job['id']}/cancel")
        assert wait_for_end(client, job["id"], 20)["status"] == "cancelled"
    assert stack.count("adapters", job["id"]) == 0


def test_job_of_a_killed_worker_resumes_from_its_last_checkpoint(stack: Stack, worker: Path) -> None:
    with stack.client() as client:
        # 320 steps: long enough to kill mid-run, short enough to finish after the resume.
        file_id = stack.upload(client, chat_rows(32, words=60))
        job = stack.create_job(client, file_id, n_epochs=40, batch_size=4)
        checkpoint_step = first_checkpoint(client, job["id"])

        stack.kill_workers(signal.SIGKILL)  # the worker and its pool process die mid-job, message unacked
        assert stack.job_row(job["id"])["status"] == "running"
        # The replacement gets the unacknowledged message back once the visibility timeout has passed.
        stack.start_worker(LORASP_BROKER_VISIBILITY_TIMEOUT_SECONDS="6")

        done = wait_for_end(client, job["id"], 150)
        assert done["status"] == "succeeded", done["error"]
        resumed = [
            event
            for event in events_of(client, job["id"])
            if (event.get("data") or {}).get("resumed_from_step") is not None
        ]
        assert resumed, "no event says the job resumed"
        assert all(event["data"]["resumed_from_step"] >= checkpoint_step for event in resumed)
        assert all(f"at step {event['data']['resumed_from_step']}" in event["message"] for event in resumed)
    row = stack.job_row(job["id"])
    assert row["attempts"] == 2
    assert stack.count("adapters", job["id"]) == 1


def test_a_training_file_with_too_long_examples_fails_the_job_naming_the_lines(
    stack: Stack, worker: Path
) -> None:
    rows = chat_rows(8, words=4)
    long_text = "x" * (stack.settings.max_example_tokens + 100)  # byte-level tokenizer: >= 1 token a byte
    rows[2]["messages"][0]["content"] = rows[5]["messages"][0]["content"] = long_text
    with stack.client() as client:
        job = stack.create_job(client, stack.upload(client, rows), n_epochs=1, batch_size=4)
        failed = wait_for_end(client, job["id"], 90)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "invalid_training_file"
    assert failed["error"]["param"] == "training_file"
    assert "line 3" in failed["error"]["message"] and "line 6" in failed["error"]["message"]
    assert stack.count("adapters", job["id"]) == 0
