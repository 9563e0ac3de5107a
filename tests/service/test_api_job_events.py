"""Job events (metrics included) and checkpoints, as the worker writes them, paged newest first."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import assert_error, create_job
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from lorasp_service.ids import new_id
from lorasp_service.jobs import add_event
from lorasp_service.orm import Adapter, Checkpoint, Job

JOBS = "/v1/fine_tuning/jobs"


@pytest.fixture()
def job_id(client: TestClient, alice: dict[str, str], chat_file: dict[str, Any]) -> str:
    response = create_job(client, alice, chat_file["id"])
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_metrics_events_carry_training_data(
    client: TestClient, alice: dict[str, str], job_id: str, db: Session
) -> None:
    job = db.get(Job, job_id)
    assert job is not None
    metrics = {"step": 10, "train_loss": 1.25, "learning_rate": 0.001, "tokens_per_second": 812.5}
    add_event(db, job.id, "Step 10/30: training loss=1.250", type="metrics", data=metrics)
    db.commit()
    newest = client.get(f"{JOBS}/{job_id}/events?limit=1", headers=alice).json()
    assert newest["has_more"] is True
    event = newest["data"][0]
    assert event["id"].startswith("ftevent-") and event["object"] == "fine_tuning.job.event"
    assert event["type"] == "metrics" and event["data"] == metrics and event["level"] == "info"
    assert isinstance(event["created_at"], int)


def test_events_page_by_sequence_newest_first(
    client: TestClient, alice: dict[str, str], job_id: str, db: Session
) -> None:
    job = db.get(Job, job_id)
    assert job is not None
    for step in range(5):
        add_event(db, job.id, f"step {step}")
    db.commit()
    messages, after = [], None
    while True:
        query = f"?limit=3{'' if after is None else f'&after={after}'}"
        page = client.get(f"{JOBS}/{job_id}/events{query}", headers=alice).json()
        messages += [event["message"] for event in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert messages[:5] == [f"step {step}" for step in reversed(range(5))]
    assert messages[-1].startswith("Created fine-tuning job") and len(messages) == 8
    assert_error(client.get(f"{JOBS}/{job_id}/events?after=ftevent-nope", headers=alice), 404, param="after")


def test_checkpoints_list_the_jobs_models_not_its_resume_checkpoints(
    client: TestClient, alice: dict[str, str], job_id: str, db: Session
) -> None:
    listed = f"{JOBS}/{job_id}/checkpoints"
    db.add(Checkpoint(id=new_id("ftckpt"), job_id=job_id, step=40, storage_key=f"jobs/{job_id}/step-40"))
    db.commit()
    assert client.get(listed, headers=alice).json()["data"] == []  # resume checkpoints stay internal
    job = db.get(Job, job_id)
    assert job is not None
    model = f"ft:tiny-random-llama:lorasp:{job_id[-8:]}"
    for step in (50, 100):  # epoch checkpoint models, then the final one (step 150)
        db.add(adapter_row(job, f"{model}:ckpt-step-{step}", step, checkpoint_job_id=job.id))
    db.add(adapter_row(job, model, 150, job_id=job.id))
    db.commit()
    first = client.get(f"{listed}?limit=2", headers=alice).json()
    assert [c["step_number"] for c in first["data"]] == [150, 100] and first["has_more"] is True
    final = first["data"][0]
    assert final["object"] == "fine_tuning.job.checkpoint" and final["id"].startswith("ftckpt-")
    assert final["fine_tuning_job_id"] == job_id
    assert final["fine_tuned_model_checkpoint"] == f"{model}:ckpt-step-150"
    assert final["metrics"] == {"step": 150, "train_loss": 0.5, "full_valid_loss": 0.75}
    rest = client.get(f"{listed}?limit=2&after={first['last_id']}", headers=alice).json()
    assert [c["step_number"] for c in rest["data"]] == [50] and rest["has_more"] is False
    assert rest["data"][0]["fine_tuned_model_checkpoint"] == f"{model}:ckpt-step-50"
    again = client.get(f"{listed}?limit=2", headers=alice).json()
    assert [c["id"] for c in again["data"]] == [c["id"] for c in first["data"]]  # stable cursors
    # the final step's checkpoint id names the final model wherever a model id goes
    retrieved = client.get(f"/v1/models/{model}:ckpt-step-150", headers=alice)
    assert retrieved.status_code == 200 and retrieved.json()["id"] == model
    assert client.get(f"/v1/models/{model}:ckpt-step-149", headers=alice).status_code == 404
    assert_error(client.get(f"{listed}?after=ftckpt-nope", headers=alice), 404, param="after")


def adapter_row(job: Job, model_id: str, step: int, **lineage: str) -> Adapter:
    return Adapter(
        id=model_id,
        tenant_id=job.tenant_id,
        base_model=job.model,
        task="causal-lm",
        storage_key=f"adapters/{model_id}",
        sha256="0" * 64,
        bytes=1,
        rank=8,
        step=step,
        metrics={"step": step, "train_loss": 2.0 - step / 100, "full_valid_loss": 0.75},
        **lineage,
    )


def test_events_and_checkpoints_of_unknown_job_are_404(client: TestClient, alice: dict[str, str]) -> None:
    assert_error(client.get(f"{JOBS}/ftjob-nope/events", headers=alice), 404)
    assert_error(client.get(f"{JOBS}/ftjob-nope/checkpoints", headers=alice), 404)
