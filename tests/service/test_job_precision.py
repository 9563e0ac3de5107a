"""A job's precision options: validated by the API (400 naming the field), stored in the spec, resolved
on the worker's hardware and reported on the job object, its events and the adapter's training summary.
Real (tiny) jobs run in-process by `run_claimed_job`, as in test_wandb_logger."""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_helpers import assert_error, create_job, storage_path
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from lorasp_core import precision
from lorasp_service import jobs
from lorasp_service.orm import Job, JobEvent
from lorasp_service.settings import Settings
from lorasp_service.training import run_claimed_job

WORKER = "test-host:precision"
JOBS = "/v1/fine_tuning/jobs"


def lorasp_method(**hyperparameters: Any) -> dict[str, Any]:
    return {"type": "lorasp", "lorasp": {"hyperparameters": {"n_epochs": 1, **hyperparameters}}}


def run_job(
    client: TestClient, headers: dict[str, str], settings: Settings, file_id: str, **knobs: Any
) -> str:
    created = create_job(client, headers, file_id, method=lorasp_method(**knobs))
    assert created.status_code == 200, created.text
    job_id = str(created.json()["id"])
    claim = jobs.claim_job(settings, job_id, WORKER)
    assert claim.runs, claim
    assert run_claimed_job(settings, job_id, WORKER, claim) == jobs.JobStatus.SUCCEEDED
    return job_id


@pytest.mark.parametrize(
    ("knobs", "fast_bf16_cpu", "reported"),
    [
        ({}, False, {"precision": "fp32", "base_dtype": "float32"}),  # "auto" on a CPU without bf16
        ({}, True, {"precision": "bf16", "base_dtype": "bfloat16"}),  # "auto" on one with it
        (
            {"mixed_precision": "no", "gradient_checkpointing": True},
            True,
            {"precision": "fp32", "base_dtype": "float32"},
        ),
    ],
)
def test_the_job_object_says_which_precision_ran(
    client: TestClient,
    alice: dict[str, str],
    chat_file: dict[str, Any],
    api_settings: Settings,
    db: Session,
    monkeypatch: pytest.MonkeyPatch,
    knobs: dict[str, Any],
    fast_bf16_cpu: bool,
    reported: dict[str, str],
) -> None:
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast_bf16_cpu)  # the worker's hardware
    job_id = run_job(client, alice, api_settings, chat_file["id"], **knobs)
    shown = client.get(f"{JOBS}/{job_id}", headers=alice).json()["method"]["lorasp"]["hyperparameters"]
    assert {name: shown[name] for name in reported} == reported
    assert shown["mixed_precision"] == knobs.get("mixed_precision", "auto")  # what was asked for
    assert shown["gradient_checkpointing"] == knobs.get("gradient_checkpointing", "auto")
    row = db.get(Job, job_id)
    assert row is not None
    db.refresh(row)
    assert jobs.TrainingSpec.from_job(row).mixed_precision == knobs.get("mixed_precision", "auto")
    events = db.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.data.is_not(None)))
    assert reported in [event.data for event in events]
    summary = json.loads(storage_path(api_settings, "adapters", job_id, "lorasp.json").read_text())
    training = summary["training_summary"]
    assert {name: training[name] for name in reported} == reported
    assert training["gradient_checkpointing"] is knobs.get("gradient_checkpointing", False)


def test_only_the_lease_holder_records_the_resolved_precision(
    client: TestClient, alice: dict[str, str], chat_file: dict[str, Any], api_settings: Settings, db: Session
) -> None:
    created = create_job(client, alice, chat_file["id"], method=lorasp_method())
    job_id = created.json()["id"]
    claim = jobs.claim_job(api_settings, job_id, WORKER)
    resolved = {"precision": "bf16", "base_dtype": "bfloat16"}
    assert not jobs.record_resolved_hyperparameters(
        api_settings, job_id, "someone-else", claim.attempt, resolved, "x"
    )
    with pytest.raises(ValueError, match="rank"):
        jobs.record_resolved_hyperparameters(api_settings, job_id, WORKER, claim.attempt, {"rank": 2}, "x")
    assert jobs.record_resolved_hyperparameters(api_settings, job_id, WORKER, claim.attempt, resolved, "ran")
    row = db.get(Job, job_id)
    assert row is not None
    db.refresh(row)
    assert row.method["lorasp"]["hyperparameters"]["precision"] == "bf16"
    assert jobs.TrainingSpec.from_job(row).rank == 8  # the stored spec still parses


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("mixed_precision", "int8"),
        ("mixed_precision", True),
        ("gradient_checkpointing", "yes"),
        ("gradient_checkpointing", 1),
    ],
)
def test_bad_precision_options_are_a_400_naming_the_field(
    client: TestClient, alice: dict[str, str], chat_file: dict[str, Any], knob: str, value: Any
) -> None:
    response = create_job(client, alice, chat_file["id"], method=lorasp_method(**{knob: value}))
    assert_error(response, 400, param=f"method.lorasp.hyperparameters.{knob}")
