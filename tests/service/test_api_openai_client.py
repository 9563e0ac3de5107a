"""The official `openai` client works against the API (over the TestClient's transport)."""

from __future__ import annotations

import io
from typing import Any

import openai
import pytest
from api_helpers import chat_rows, jsonl
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from lorasp_service.jobs import add_event
from lorasp_service.orm import Job


@pytest.fixture()
def openai_client(client: TestClient, alice: dict[str, str]) -> openai.OpenAI:
    key = alice["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=client, max_retries=0)


def test_files_jobs_events_checkpoints_and_models_through_the_openai_client(
    openai_client: openai.OpenAI, db: Session, make_adapter: Any, alice: dict[str, str]
) -> None:
    dataset = ("train.jsonl", io.BytesIO(jsonl(chat_rows())))
    uploaded = openai_client.files.create(file=dataset, purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.status == "processed"
    assert openai_client.files.retrieve(uploaded.id).bytes == uploaded.bytes

    job = openai_client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=uploaded.id,
        suffix="client",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    )
    assert job.status == "queued" and job.hyperparameters.n_epochs == 2
    assert openai_client.fine_tuning.jobs.retrieve(job.id).id == job.id
    assert job.id in [listed.id for listed in openai_client.fine_tuning.jobs.list(limit=5).data]

    row = db.get(Job, job.id)
    assert row is not None
    add_event(db, row.id, "Step 1/2: training loss=0.9", type="metrics", data={"step": 1, "train_loss": 0.9})
    db.commit()
    events = openai_client.fine_tuning.jobs.list_events(job.id, limit=2).data
    assert events[0].type == "metrics" and events[0].data == {"step": 1, "train_loss": 0.9}
    assert openai_client.fine_tuning.jobs.checkpoints.list(job.id).data == []

    cancelled = openai_client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"

    adapter = make_adapter(alice["X-Tenant-Id"])
    model_ids = [model.id for model in openai_client.models.list().data]
    assert "tiny-random-llama" in model_ids and adapter.id in model_ids
    assert openai_client.models.delete(adapter.id).deleted is True

    assert openai_client.files.delete(uploaded.id).deleted is True


def test_errors_surface_as_openai_exceptions(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        openai_client.fine_tuning.jobs.retrieve("ftjob-missing")
    assert not_found.value.code == "not_found"
    with pytest.raises(openai.BadRequestError) as bad_request:
        openai_client.fine_tuning.jobs.create(model="tiny-random-llama", training_file="file-x", seed=-5)
    assert bad_request.value.param == "seed"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            api_key="sk-lorasp-wrong",
            base_url="http://testserver/v1",
            http_client=openai_client._client,
            max_retries=0,
        ).models.list()
