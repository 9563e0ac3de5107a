"""Bring your own base model, end to end: register a Qwen2-style causal LM with the CLI and a BERT encoder
with the admin API (both built in code and saved with a tokenizer), fine-tune each through the official
`openai` client against `lorasp serve` and a real worker, then chat with / classify with the result; the
downloaded causal-LM adapter, loaded by PEFT onto the registered folder, gives lorasp's merged logits."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from e2e_stack import Stack, chat_rows, jsonl, run_cli
from model_dirs import bert_dir, qwen2_dir
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lorasp_core import load_adapter, load_base_model
from lorasp_core.wrapping import merge_adapters

pytestmark = pytest.mark.services
METHOD = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}}


def _finished(client: openai.OpenAI, job_id: str) -> openai.types.fine_tuning.FineTuningJob:
    deadline = time.monotonic() + 180
    job = client.fine_tuning.jobs.retrieve(job_id)
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job_id)
    return job


def test_registered_models_fine_tune_and_serve(stack: Stack, worker: Path, tmp_path: Path) -> None:
    qwen = qwen2_dir(tmp_path / "q")
    out = run_cli(stack.env, "admin", "models", "add", "my-qwen", "--from", str(qwen))
    assert "registered 'my-qwen': causal-lm" in out
    admin_key = (
        run_cli(stack.env, "admin", "create-key", "--tenant", "ops", "--admin").strip().splitlines()[-1]
    )
    registered = httpx.post(
        f"{stack.base_url}/v1/admin/models",
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout=60,
        json={"name": "my-bert", "source": str(bert_dir(tmp_path / "b"))},
    )
    assert registered.status_code == 201, registered.text
    client = openai.OpenAI(api_key=stack.api_key, base_url=stack.base_url + "/v1", max_retries=0, timeout=60)
    offered = {model.id for model in client.models.list()}
    assert {"my-qwen", "my-bert", "tiny-random-llama"} <= offered

    chat = client.files.create(file=("c.jsonl", io.BytesIO(jsonl(chat_rows(8)))), purpose="fine-tune")
    rows = [{"text": f"{label} words #{i}", "label": label} for i, label in enumerate(["neg", "pos"] * 4)]
    labelled = client.files.create(file=("l.jsonl", io.BytesIO(jsonl(rows))), purpose="fine-tune")
    causal = client.fine_tuning.jobs.create(model="my-qwen", training_file=chat.id, seed=1, method=METHOD)
    encoder = client.fine_tuning.jobs.create(
        model="my-bert", training_file=labelled.id, seed=1, method=METHOD
    )
    causal, encoder = _finished(client, causal.id), _finished(client, encoder.id)
    assert causal.status == "succeeded", causal.error
    assert encoder.status == "succeeded", encoder.error
    assert causal.model == "my-qwen" and causal.fine_tuned_model.startswith("ft:my-qwen:")

    completion = client.chat.completions.create(
        model=causal.fine_tuned_model,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=3,
        temperature=0,
    )
    assert completion.choices and completion.usage is not None and completion.usage.completion_tokens > 0
    base = client.chat.completions.create(
        model="my-qwen", messages=[{"role": "user", "content": "hello"}], max_tokens=2, temperature=0
    )
    assert base.model == "my-qwen" and base.choices
    classified = httpx.post(
        f"{stack.base_url}/v1/classifications",
        headers=stack.headers,
        timeout=60,
        json={"model": encoder.fine_tuned_model, "input": ["pos words", "neg words"]},
    )
    assert classified.status_code == 200, classified.text
    assert {item["label"] for item in classified.json()["data"]} <= {"neg", "pos"}

    _peft_matches_lorasp(stack, causal.fine_tuned_model, qwen, tmp_path / "adapter")


def _peft_matches_lorasp(stack: Stack, model_id: str, registered: Path, target: Path) -> None:
    """PEFT's PeftModel on the registered folder and lorasp's merged model give the same logits."""
    url = f"{stack.base_url}/v1/adapters/{model_id}/download"
    archive = httpx.get(url, headers=stack.headers, timeout=60)
    assert archive.status_code == 200, archive.text
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(target, filter="data")
    input_ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    base = AutoModelForCausalLM.from_pretrained(str(registered), dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(input_ids=input_ids).logits
        peft_logits = PeftModel.from_pretrained(base, str(target)).eval()(input_ids=input_ids).logits
    merged = load_base_model(str(registered)).model
    load_adapter(merged, target)
    merge_adapters(merged)
    with torch.no_grad():
        lorasp_logits = merged(input_ids=input_ids).logits
    assert (peft_logits - base_logits).abs().max() > 1e-5  # the trained adapter changes the model
    torch.testing.assert_close(peft_logits, lorasp_logits, atol=1e-4, rtol=0)
