"""Weighted and tool-calling chat files through the official `openai` client: uploaded, validated
(with line and field), trained by the worker in-process, and refused (400, saying why) for a base
model whose chat template cannot render tools."""

from __future__ import annotations

import io
import json
import secrets
from pathlib import Path
from typing import Any

import openai
import pytest
from api_helpers import jsonl
from fastapi.testclient import TestClient
from model_dirs import llama_dir

from lorasp_core.data import TOOLS_UNSUPPORTED
from lorasp_core.models.tiny import TOOL_CALLING_TEMPLATE
from lorasp_service import jobs
from lorasp_service.settings import Settings
from lorasp_service.training import run_claimed_job

WORKER = "test-host:formats"
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
]


def tool_row(city: str) -> dict[str, Any]:
    arguments = json.dumps({"city": city})
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    ]
    return {
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
            {"role": "assistant", "content": f"It is sunny in {city}."},
        ],
    }


def weighted_row(index: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"Question {index}?"},
            {"role": "assistant", "content": "A draft answer to ignore.", "weight": 0},
            {"role": "user", "content": "Better?"},
            {"role": "assistant", "content": f"Answer {index}.", "weight": 1},
        ]
    }


@pytest.fixture()
def openai_client(client: TestClient, alice: dict[str, str]) -> openai.OpenAI:
    key = alice["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=client, max_retries=0)


@pytest.fixture()
def tool_model(client: TestClient, admin: dict[str, str], tmp_path: Path) -> str:
    """A registered tiny Llama whose chat template renders tools (Qwen2.5 / Hermes style)."""
    name = f"tools-{secrets.token_hex(4)}"
    body = {"name": name, "source": str(llama_dir(tmp_path / name)), "chat_template": TOOL_CALLING_TEMPLATE}
    response = client.post("/v1/admin/models", headers=admin, json=body)
    assert response.status_code == 201, response.text
    return name


def upload(client: openai.OpenAI, rows: list[dict[str, Any]] | bytes) -> str:
    data = rows if isinstance(rows, bytes) else jsonl(rows)
    return client.files.create(file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune").id


def train(client: openai.OpenAI, settings: Settings, model: str, file_id: str) -> Any:
    job = client.fine_tuning.jobs.create(
        model=model,
        training_file=file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    )
    claim = jobs.claim_job(settings, job.id, WORKER)
    assert claim.runs, claim
    run_claimed_job(settings, job.id, WORKER, claim)
    return client.fine_tuning.jobs.retrieve(job.id)


def test_a_weighted_file_trains(openai_client: openai.OpenAI, api_settings: Settings) -> None:
    job = train(
        openai_client,
        api_settings,
        "tiny-random-llama",
        upload(openai_client, [weighted_row(i) for i in range(4)]),
    )
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model and job.trained_tokens


def test_bad_weights_and_tool_shapes_are_400s_naming_line_and_field(openai_client: openai.OpenAI) -> None:
    bad_weight = weighted_row(0)
    bad_weight["messages"][1]["weight"] = 0.5
    bad_call = tool_row("Rome")
    bad_call["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{not json"
    with pytest.raises(openai.BadRequestError) as refused:
        upload(openai_client, [weighted_row(1), bad_weight, bad_call])
    message = refused.value.message
    assert "line 2: field 'messages[1].weight': must be 0 or 1, got number 0.5" in message
    assert "line 3: field 'messages[1].tool_calls[0].function.arguments': is not valid JSON" in message
    silent = weighted_row(0)
    silent["messages"][3]["weight"] = 0
    with pytest.raises(openai.BadRequestError) as all_zero:
        upload(openai_client, [silent])
    assert "file: every assistant message in the file has weight 0" in all_zero.value.message


def test_tool_file_trains_on_a_tool_template_and_is_refused_for_one_without(
    openai_client: openai.OpenAI, api_settings: Settings, tool_model: str
) -> None:
    file_id = upload(openai_client, [tool_row(city) for city in ("Paris", "Rome", "Oslo", "Lima")])
    assert openai_client.files.retrieve(file_id).status == "processed"

    with pytest.raises(openai.BadRequestError) as refused:  # the catalog's tiny Llama has plain ChatML
        openai_client.fine_tuning.jobs.create(model="tiny-random-llama", training_file=file_id)
    assert refused.value.code == "unsupported_tool_calls" and refused.value.param == "training_file"
    assert TOOLS_UNSUPPORTED in refused.value.message

    job = train(openai_client, api_settings, tool_model, file_id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model and job.fine_tuned_model.startswith(f"ft:{tool_model}:")
