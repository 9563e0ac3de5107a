"""POST /v1/fine_tuning/jobs/{id}/pause and /resume through the API and the official client: a queued job
pauses at once, a running one is asked to (its worker pauses it), resume queues it again and re-enqueues
it after the commit; every other move is a 400 with its code, and the paused state parses in the client."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from api_helpers import EnqueueRecorder, assert_error, create_job
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from lorasp_service.orm import Job, JobEvent

JOBS = "/v1/fine_tuning/jobs"


@pytest.fixture()
def job_id(client: TestClient, alice: dict[str, str], chat_file: dict[str, Any]) -> str:
    response = create_job(client, alice, chat_file["id"])
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def messages(db: Session, job_id: str) -> list[str]:
    db.expire_all()
    rows = db.query(JobEvent).filter_by(job_id=job_id).order_by(JobEvent.seq).all()
    return [row.message for row in rows]


def set_status(db: Session, job_id: str, status: str) -> None:
    db.execute(update(Job).where(Job.id == job_id).values(status=status))
    db.commit()


def test_a_queued_job_pauses_at_once_and_resumes_into_the_queue(
    client: TestClient, alice: dict[str, str], job_id: str, db: Session, enqueue_recorder: EnqueueRecorder
) -> None:
    enqueue_recorder.job_ids.clear()
    paused = client.post(f"{JOBS}/{job_id}/pause", headers=alice)
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"
    assert messages(db, job_id)[-1] == "Job paused"
    assert enqueue_recorder.job_ids == []  # the queued message is a no-op for a worker now

    resumed = client.post(f"{JOBS}/{job_id}/resume", headers=alice)
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "queued" and resumed.json()["pause_requested"] is False
    assert messages(db, job_id)[-1] == "Job resumed"
    db.expire_all()
    assert db.get(Job, job_id).resumes == 1  # type: ignore[union-attr]
    assert enqueue_recorder.job_ids == [job_id]  # committed first, then sent to the workers


def test_a_running_job_is_asked_to_pause_and_a_second_pause_changes_nothing(
    client: TestClient, alice: dict[str, str], job_id: str, db: Session
) -> None:
    set_status(db, job_id, "running")
    first = client.post(f"{JOBS}/{job_id}/pause", headers=alice)
    assert first.status_code == 200, first.text
    assert (first.json()["status"], first.json()["pause_requested"]) == ("running", True)
    before = messages(db, job_id)
    assert before[-1] == "Pause requested; the job pauses at its next step"
    assert client.post(f"{JOBS}/{job_id}/pause", headers=alice).status_code == 200
    assert messages(db, job_id) == before
    # Not paused yet (the worker has not stopped): resume is refused rather than racing the worker.
    assert_error(
        client.post(f"{JOBS}/{job_id}/resume", headers=alice),
        400,
        code="job_not_resumable",
        param="fine_tuning_job_id",
    )


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled", "paused"])
def test_only_queued_and_running_jobs_can_be_paused(
    client: TestClient, alice: dict[str, str], job_id: str, db: Session, status: str
) -> None:
    set_status(db, job_id, status)
    error = assert_error(
        client.post(f"{JOBS}/{job_id}/pause", headers=alice),
        400,
        code="job_not_pausable",
        param="fine_tuning_job_id",
    )
    assert status in error["message"]
    db.expire_all()
    assert db.get(Job, job_id).status == status  # type: ignore[union-attr]


def test_a_running_job_being_cancelled_cannot_be_paused(
    client: TestClient, alice: dict[str, str], job_id: str, db: Session
) -> None:
    set_status(db, job_id, "running")
    assert client.post(f"{JOBS}/{job_id}/cancel", headers=alice).status_code == 200
    assert_error(client.post(f"{JOBS}/{job_id}/pause", headers=alice), 400, code="job_not_pausable")


@pytest.mark.parametrize("status", ["queued", "running", "succeeded", "failed", "cancelled"])
def test_only_a_paused_job_can_be_resumed(
    client: TestClient,
    alice: dict[str, str],
    job_id: str,
    db: Session,
    status: str,
    enqueue_recorder: EnqueueRecorder,
) -> None:
    set_status(db, job_id, status)
    enqueue_recorder.job_ids.clear()
    assert_error(
        client.post(f"{JOBS}/{job_id}/resume", headers=alice),
        400,
        code="job_not_resumable",
        param="fine_tuning_job_id",
    )
    assert enqueue_recorder.job_ids == []


def test_a_paused_job_can_be_cancelled(client: TestClient, alice: dict[str, str], job_id: str) -> None:
    assert client.post(f"{JOBS}/{job_id}/pause", headers=alice).json()["status"] == "paused"
    cancelled = client.post(f"{JOBS}/{job_id}/cancel", headers=alice)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None


def test_another_tenants_job_cannot_be_paused_or_resumed(
    client: TestClient, bob: dict[str, str], job_id: str
) -> None:
    assert_error(client.post(f"{JOBS}/{job_id}/pause", headers=bob), 404, param="fine_tuning_job_id")
    assert_error(client.post(f"{JOBS}/{job_id}/resume", headers=bob), 404, param="fine_tuning_job_id")


def test_the_official_client_pauses_resumes_and_reads_a_paused_job(
    client: TestClient, alice: dict[str, str], job_id: str
) -> None:
    sdk = openai.OpenAI(
        api_key=alice["Authorization"].removeprefix("Bearer "),
        base_url="http://testserver/v1",
        http_client=client,
        max_retries=0,
    )
    paused = sdk.fine_tuning.jobs.pause(job_id)
    # "paused" is not in the client's status Literal; it builds the model without validating it.
    assert paused.status == "paused"
    retrieved = sdk.fine_tuning.jobs.retrieve(job_id)
    assert (retrieved.id, retrieved.status) == (job_id, "paused")
    assert retrieved.hyperparameters.n_epochs == paused.hyperparameters.n_epochs
    assert [job.status for job in sdk.fine_tuning.jobs.list().data if job.id == job_id] == ["paused"]
    assert sdk.fine_tuning.jobs.resume(job_id).status == "queued"
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.fine_tuning.jobs.resume(job_id)
    assert raised.value.code == "job_not_resumable"
