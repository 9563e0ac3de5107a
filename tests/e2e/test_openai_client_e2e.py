"""The official `openai` Python client against the live server (a `lorasp serve` process) and a real worker:
upload, fine-tune, follow, inspect, and chat with the fine-tuned model."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import openai
import pytest
from e2e_stack import Stack, chat_rows, jsonl

pytestmark = pytest.mark.services


def test_openai_client_fine_tunes_and_chats_with_the_result(stack: Stack, worker: Path) -> None:
    client = openai.OpenAI(api_key=stack.api_key, base_url=stack.base_url + "/v1", max_retries=0, timeout=60)

    uploaded = client.files.create(
        file=("train.jsonl", io.BytesIO(jsonl(chat_rows(24, words=20)))), purpose="fine-tune"
    )
    assert uploaded.id.startswith("file-")
    validation = client.files.create(
        file=("valid.jsonl", io.BytesIO(jsonl(chat_rows(6, words=20)))), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=uploaded.id,
        validation_file=validation.id,
        suffix="client",
        seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    )
    assert job.status in ("validating_files", "queued", "running")

    deadline = time.monotonic() + 120
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model and job.fine_tuned_model.startswith("ft:tiny-random-llama:client:")
    assert job.trained_tokens and job.trained_tokens > 0

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))  # every page
    assert any("successfully completed" in event.message for event in events)
    # One metrics event per step, OpenAI's names; 12 steps (24 rows / batch 4 x 2 epochs), so "auto"
    # validates the sample every 2 steps and the whole file at the two epoch ends.
    metrics = {event.data["step"]: event.data for event in events if event.type == "metrics"}  # type: ignore[index]
    assert sorted(metrics) == list(range(1, 13))
    assert all(0 <= data["train_mean_token_accuracy"] <= 1 for data in metrics.values())
    validated = [step for step, data in sorted(metrics.items()) if data.get("valid_loss", 0) > 0]
    assert validated == [2, 4, 6, 8, 10, 12]
    assert [step for step, data in sorted(metrics.items()) if "full_valid_loss" in data] == [6, 12]

    # Checkpoints are models: the final one (step 12) and the end of epoch 1 (step 6), newest first.
    listed = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.fine_tuned_model_checkpoint for c in listed] == [
        f"{job.fine_tuned_model}:ckpt-step-12",
        f"{job.fine_tuned_model}:ckpt-step-6",
    ]
    assert [c.step_number for c in listed] == [12, 6]
    for checkpoint in listed:
        step = checkpoint.step_number
        assert checkpoint.metrics.full_valid_loss == metrics[step]["full_valid_loss"]
        assert checkpoint.metrics.valid_mean_token_accuracy == metrics[step]["valid_mean_token_accuracy"]
        assert checkpoint.metrics.train_loss == metrics[step]["train_loss"]
    epoch_checkpoint = client.models.retrieve(f"{job.fine_tuned_model}:ckpt-step-6")
    assert epoch_checkpoint.id == f"{job.fine_tuned_model}:ckpt-step-6"
    final_checkpoint = client.chat.completions.create(
        model=f"{job.fine_tuned_model}:ckpt-step-12",
        messages=[{"role": "user", "content": "great"}],
        max_tokens=2,
        temperature=0,
    )
    assert final_checkpoint.choices

    # result_files: step_metrics.csv, one row per step, readable with files.content
    assert len(job.result_files) == 1
    result = client.files.retrieve(job.result_files[0])
    assert (result.purpose, result.filename) == ("fine-tune-results", "step_metrics.csv")
    rows = list(csv.DictReader(io.StringIO(client.files.content(result.id).text)))
    assert [int(row["step"]) for row in rows] == list(range(1, 13))
    assert float(rows[5]["full_valid_loss"]) == pytest.approx(metrics[6]["full_valid_loss"])
    assert rows[0]["full_valid_loss"] == "" and float(rows[0]["tokens_per_second"]) > 0

    model = client.models.retrieve(job.fine_tuned_model)
    assert model.id == job.fine_tuned_model

    completion = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": "great great great"}],
        max_tokens=4,
        temperature=0,
    )
    assert completion.model == job.fine_tuned_model
    assert completion.choices and isinstance(completion.choices[0].message.content, str)
    assert completion.usage is not None and completion.usage.completion_tokens > 0
