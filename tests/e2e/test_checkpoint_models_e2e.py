"""Epoch checkpoints are models: with the official `openai` client against a live server and worker, the
kept checkpoints of a job answer chat, retrieve and download (a PEFT directory), older ones are pruned,
another tenant gets 404s, and deleting the job's model deletes its checkpoints."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import httpx
import openai
import pytest
from e2e_stack import Stack, chat_rows, jsonl, run_cli
from peft import PeftModel

from lorasp_core import load_base_model

pytestmark = pytest.mark.services


def _client(stack: Stack, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, base_url=stack.base_url + "/v1", max_retries=0, timeout=60)


def _download(stack: Stack, api_key: str, model_id: str) -> httpx.Response:
    return httpx.get(
        f"{stack.base_url}/v1/adapters/{model_id}/download",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=60,
    )


def test_epoch_checkpoints_are_servable_downloadable_models(
    stack: Stack, worker: Path, tmp_path: Path
) -> None:
    client = _client(stack, stack.api_key)
    uploaded = client.files.create(
        file=("train.jsonl", io.BytesIO(jsonl(chat_rows(24)))), purpose="fine-tune"
    )
    # 24 rows / batch 4 = 6 steps per epoch; 4 epochs end at steps 6, 12, 18 and 24 (the final model).
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=uploaded.id,
        suffix="ckpt",
        seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 4}}},
    )
    deadline = time.monotonic() + 180
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    final = job.fine_tuned_model
    assert final is not None
    kept, pruned = [f"{final}:ckpt-step-{step}" for step in (12, 18)], f"{final}:ckpt-step-6"

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))  # every page
    announced = [
        event.data["fine_tuned_model_checkpoint"]
        for event in events
        if event.data and "fine_tuned_model_checkpoint" in event.data
    ]
    expected = sorted([pruned] + kept)
    assert sorted(announced) == expected  # three epochs saved, the newest two kept

    listed = {model.id for model in client.models.list().data}
    assert set(kept) <= listed and pruned not in listed
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(pruned)
    for model_id, step in zip(kept, (12, 18), strict=True):
        retrieved = client.models.retrieve(model_id)
        assert retrieved.id == model_id
        details = (retrieved.model_extra or {})["lorasp"]
        assert details["step"] == step and details["job_id"] == job.id
        assert details["metrics"]["step"] == step and details["metrics"]["train_loss"] > 0
        completion = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "great great"}], max_tokens=3, temperature=0
        )
        assert completion.model == model_id and completion.usage and completion.usage.completion_tokens > 0

    loaded = httpx.post(f"{stack.base_url}/v1/adapters/{kept[0]}/load", headers=stack.headers, timeout=60)
    assert loaded.status_code == 200, loaded.text
    unloaded = httpx.post(f"{stack.base_url}/v1/adapters/{kept[0]}/unload", headers=stack.headers, timeout=60)
    assert unloaded.status_code == 200, unloaded.text

    archive = _download(stack, stack.api_key, kept[1])
    assert archive.status_code == 200, archive.text
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(tmp_path / "ckpt", filter="data")
    base = load_base_model("tiny-random-llama")
    peft_model = PeftModel.from_pretrained(base.model, str(tmp_path / "ckpt"))
    assert any("lora_B" in name for name, _ in peft_model.named_parameters())

    other_key = (
        run_cli(stack.env, "admin", "create-key", "--tenant", "e2e-ckpt-other").strip().splitlines()[-1]
    )
    other = _client(stack, other_key)
    with pytest.raises(openai.NotFoundError):
        other.models.retrieve(kept[0])
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(
            model=kept[0], messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert _download(stack, other_key, kept[0]).status_code == 404

    assert client.models.delete(final).deleted
    for model_id in kept:
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(model_id)
        assert _download(stack, stack.api_key, model_id).status_code == 404
