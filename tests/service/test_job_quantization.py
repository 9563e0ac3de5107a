"""The job option base_quantization: validated by the API (400 naming the field; nf4 only where a CUDA
worker class is configured), stored in the spec, recorded on the adapter, and served on a base held the
same way. Real (tiny) jobs run in-process by `run_claimed_job`, as in test_job_precision."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from api_helpers import EnqueueRecorder, assert_error, chat_rows, create_job, jsonl, storage_path, upload
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import get_enqueue
from api.main import create_app
from lorasp_service import jobs
from lorasp_service.orm import Adapter, Job, JobEvent
from lorasp_service.settings import ResourceClass, Settings
from lorasp_service.training import run_claimed_job

WORKER = "test-host:quantization"
JOBS = "/v1/fine_tuning/jobs"
PARAM = "method.lorasp.hyperparameters.base_quantization"
CPU_CLASS = ResourceClass(name="cpu-box", memory_gib=8.0)
GPU_CLASS = ResourceClass(name="gpu-box", memory_gib=8.0, device="cuda", gpu_type="test-gpu")


def lorasp_method(**hyperparameters: Any) -> dict[str, Any]:
    return {
        "type": "lorasp",
        "lorasp": {"hyperparameters": {"n_epochs": 1, "mixed_precision": "no", **hyperparameters}},
    }


def test_an_int8_job_records_its_base_and_is_served_on_an_int8_base(
    client: TestClient, alice: dict[str, str], chat_file: dict[str, Any], api_settings: Settings, db: Session
) -> None:
    created = create_job(client, alice, chat_file["id"], method=lorasp_method(base_quantization="int8"))
    assert created.status_code == 200, created.text
    job_id = str(created.json()["id"])
    claim = jobs.claim_job(api_settings, job_id, WORKER)
    assert claim.runs, claim
    assert run_claimed_job(api_settings, job_id, WORKER, claim) == jobs.JobStatus.SUCCEEDED

    job = client.get(f"{JOBS}/{job_id}", headers=alice).json()
    assert job["method"]["lorasp"]["hyperparameters"]["base_quantization"] == "int8"
    row = db.get(Job, job_id)
    assert row is not None
    db.refresh(row)
    assert jobs.TrainingSpec.from_job(row).to_train_config("causal-lm").base_quantization == "int8"
    messages = [e.message for e in db.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
    assert any("linear weights in int8" in message for message in messages)
    summary = json.loads(storage_path(api_settings, "adapters", job_id, "lorasp.json").read_text())
    assert summary["training_summary"]["base_quantization"] == "int8"
    adapter = db.scalars(select(Adapter).where(Adapter.job_id == job_id)).one()
    assert adapter.base_quantization == "int8" and adapter.base_model == "tiny-random-llama"

    with TestClient(create_app(api_settings)) as serving:  # a fresh engine: no resident yet
        payload = {"model": adapter.id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        answered = serving.post("/v1/chat/completions", headers=alice, json=payload)
        assert answered.status_code == 200, answered.text
        (loaded,) = [a for a in serving.get("/v1/adapters/loaded", headers=alice).json()["data"]]
        assert loaded["id"] == adapter.id
        assert (loaded["base_model"], loaded["base_quantization"]) == ("tiny-random-llama", "int8")


@pytest.mark.parametrize("value", ["int4", 8, True, "INT8"])
def test_a_bad_base_quantization_is_a_400_naming_the_field(
    client: TestClient, alice: dict[str, str], chat_file: dict[str, Any], value: Any
) -> None:
    response = create_job(client, alice, chat_file["id"], method=lorasp_method(base_quantization=value))
    assert_error(response, 400, param=PARAM)


@pytest.fixture()
def classes_client(api_settings: Settings, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    settings = api_settings.model_copy(update={"resource_classes": request.param})
    app = create_app(settings)
    app.dependency_overrides[get_enqueue] = lambda: EnqueueRecorder()
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize("classes_client", [[CPU_CLASS]], indirect=True)
def test_nf4_without_a_cuda_worker_class_is_a_400_naming_the_field(
    classes_client: TestClient, alice: dict[str, str]
) -> None:
    file_id = upload(classes_client, alice, jsonl(chat_rows())).json()["id"]
    response = create_job(classes_client, alice, file_id, method=lorasp_method(base_quantization="nf4"))
    error = assert_error(response, 400, param=PARAM, code="unsupported_quantization")
    assert "cuda" in error["message"] and "cpu-box" in error["message"]
    int8 = create_job(classes_client, alice, file_id, method=lorasp_method(base_quantization="int8"))
    assert int8.status_code == 200, int8.text
    assert int8.json()["resource_class"] == "cpu-box"


@pytest.mark.parametrize("classes_client", [[CPU_CLASS, GPU_CLASS]], indirect=True)
def test_nf4_goes_to_the_cuda_class(classes_client: TestClient, alice: dict[str, str]) -> None:
    file_id = upload(classes_client, alice, jsonl(chat_rows())).json()["id"]
    nf4 = create_job(classes_client, alice, file_id, method=lorasp_method(base_quantization="nf4"))
    assert nf4.status_code == 200, nf4.text
    assert nf4.json()["resource_class"] == "gpu-box"
    plain = create_job(classes_client, alice, file_id, method=lorasp_method())
    assert plain.status_code == 200 and plain.json()["resource_class"] == "cpu-box"
