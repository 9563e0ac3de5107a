"""The official `openai` Python client against the live server (a `lorasp serve` process) and a real worker:
upload, fine-tune, follow, inspect, and chat with the fine-tuned model."""

from __future__ import annotations

import io
import time
from pathlib import Path

import openai
import pytest
from e2e_stack import Stack, chat_rows, jsonl

pytestmark = pytest.mark.services


def test_openai_client_fine_tunes_and_chats_with_the_result(stack: Stack, worker: Path) -> None:
    client = openai.OpenAI(api_key=stack.api_key, base_url=stack.base_url + "/v1", max_retries=0, timeout=60)

    uploaded = client.files.create(file=("train.jsonl", io.BytesIO(jsonl(chat_rows(24, words=20)))),
                                   purpose="fine-tune")
    assert uploaded.id.startswith("file-")
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama", training_file=uploaded.id, suffix="client", seed=1,
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

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert any(event.type == "metrics" for event in events)
    assert any("successfully completed" in event.message for event in events)

    # The listing holds resume checkpoints, which a job that succeeded no longer keeps (pruned at its end).
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []
    # 12 steps (24 rows / batch 4 x 2 epochs): the end of epoch 1 (step 6) stays as a servable model.
    epoch_checkpoint = client.models.retrieve(f"{job.fine_tuned_model}:ckpt-step-6")
    assert epoch_checkpoint.id == f"{job.fine_tuned_model}:ckpt-step-6"

    model = client.models.retrieve(job.fine_tuned_model)
    assert model.id == job.fine_tuned_model

    completion = client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "great great great"}],
        max_tokens=4, temperature=0,
    )
    assert completion.model == job.fine_tuned_model
    assert completion.choices and isinstance(completion.choices[0].message.content, str)
    assert completion.usage is not None and completion.usage.completion_tokens > 0
