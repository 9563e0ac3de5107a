"""Preference fine-tuning (DPO) end to end with the official `openai` client against a live server and a
real worker: from a base model, and after a supervised job (the usual SFT -> DPO recipe)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import openai
import pytest
from e2e_stack import Stack, chat_rows, jsonl, openai_client, poll_until_finished
from openai.types.fine_tuning import FineTuningJob

pytestmark = pytest.mark.services

DPO_FIGURES = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


def preference_rows(count: int) -> list[dict[str, Any]]:
    """The sentiment chat data as pairs: the right label is preferred, the other one is not."""
    rows = []
    for row in chat_rows(count):
        prompt, answer = row["messages"]
        wrong = "negative" if answer["content"] == "positive" else "positive"
        rows.append(
            {
                "input": {"messages": [prompt]},
                "preferred_output": [answer],
                "non_preferred_output": [{"role": "assistant", "content": wrong}],
            }
        )
    return rows


def _step_metrics(client: openai.OpenAI, job: FineTuningJob) -> dict[int, dict[str, Any]]:
    events = client.fine_tuning.jobs.list_events(job.id, limit=100)
    return {event.data["step"]: event.data for event in events if event.type == "metrics"}  # type: ignore[index]


def _dpo_job(client: openai.OpenAI, model: str, training_file: str) -> FineTuningJob:
    method = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 3, "batch_size": 4}}}
    job = client.fine_tuning.jobs.create(
        model=model,
        training_file=training_file,
        suffix="dpo",
        seed=3,
        method=method,  # type: ignore[arg-type]
    )
    return poll_until_finished(client, job)


def test_a_dpo_job_trains_reports_its_rewards_and_its_model_chats(stack: Stack, worker: Path) -> None:
    client = openai_client(stack)
    pairs = client.files.create(
        file=("pairs.jsonl", io.BytesIO(jsonl(preference_rows(8)))), purpose="fine-tune"
    )
    job = _dpo_job(client, "tiny-random-llama", pairs.id)
    assert job.status == "succeeded", job.error
    assert job.method is not None and job.method.type == "dpo"
    assert job.method.dpo is not None and job.method.dpo.hyperparameters is not None
    assert job.method.dpo.hyperparameters.beta == 0.2
    assert job.fine_tuned_model and job.fine_tuned_model.startswith("ft:tiny-random-llama:dpo:")

    metrics = _step_metrics(client, job)
    assert sorted(metrics) == list(range(1, 7))  # 8 pairs / batch 4 x 3 epochs
    assert all(set(DPO_FIGURES) <= set(data) for data in metrics.values())
    # the policy starts as the reference (the base model: B is zero), so the first loss is log 2
    assert metrics[1]["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert metrics[6]["rewards/margins"] > metrics[1]["rewards/margins"]

    rows = list(csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).text)))
    assert [int(row["step"]) for row in rows] == list(range(1, 7))
    assert float(rows[5]["rewards/margins"]) == pytest.approx(metrics[6]["rewards/margins"])

    completion = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": "great great great"}],
        max_tokens=4,
        temperature=0,
    )
    assert completion.model == job.fine_tuned_model
    assert completion.choices and isinstance(completion.choices[0].message.content, str)


def test_dpo_continues_from_a_supervised_model_whose_adapter_is_the_reference(
    stack: Stack, worker: Path
) -> None:
    client = openai_client(stack)
    chats = client.files.create(file=("sft.jsonl", io.BytesIO(jsonl(chat_rows(8)))), purpose="fine-tune")
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}}
    sft = poll_until_finished(
        client,
        client.fine_tuning.jobs.create(
            model="tiny-random-llama",
            training_file=chats.id,
            seed=2,
            method=method,  # type: ignore[arg-type]
        ),
    )
    assert sft.status == "succeeded", sft.error
    assert sft.fine_tuned_model is not None
    pairs = client.files.create(
        file=("pairs.jsonl", io.BytesIO(jsonl(preference_rows(8)))), purpose="fine-tune"
    )
    job = _dpo_job(client, sft.fine_tuned_model, pairs.id)
    assert job.status == "succeeded", job.error
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert any(f"Starting from the weights of {sft.fine_tuned_model}" in event.message for event in events)
    # the reference is the supervised adapter the job starts from: policy == reference at step 1, so the
    # loss is exactly log 2 (against the base model it would not be: the SFT adapter moved the answers)
    metrics = _step_metrics(client, job)
    assert metrics[1]["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert abs(metrics[1]["rewards/chosen"]) < 1e-4 and abs(metrics[1]["rewards/rejected"]) < 1e-4
    completion = client.chat.completions.create(
        model=job.fine_tuned_model or "", messages=[{"role": "user", "content": "awful"}], max_tokens=2
    )
    assert completion.choices
