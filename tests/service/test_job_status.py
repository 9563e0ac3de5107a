"""The job status table: every legal move is allowed, every other one raises a typed error, and the
compare-and-set mover changes nothing when the job is no longer where the caller thought it was."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from api_helpers import create_job
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from lorasp_service import jobs
from lorasp_service.jobs import IllegalTransitionError, JobStatus
from lorasp_service.orm import Job, JobEvent

LEGAL = {
    (JobStatus.VALIDATING_FILES, JobStatus.QUEUED),
    (JobStatus.VALIDATING_FILES, JobStatus.FAILED),
    (JobStatus.VALIDATING_FILES, JobStatus.CANCELLED),
    (JobStatus.QUEUED, JobStatus.RUNNING),
    (JobStatus.QUEUED, JobStatus.FAILED),
    (JobStatus.QUEUED, JobStatus.CANCELLED),
    (JobStatus.RUNNING, JobStatus.SUCCEEDED),
    (JobStatus.RUNNING, JobStatus.FAILED),
    (JobStatus.RUNNING, JobStatus.CANCELLED),
    (JobStatus.QUEUED, JobStatus.PAUSED),
    (JobStatus.RUNNING, JobStatus.PAUSED),
    (JobStatus.PAUSED, JobStatus.QUEUED),
    (JobStatus.PAUSED, JobStatus.CANCELLED),
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(JobStatus, JobStatus)))
def test_every_pair_of_statuses_is_legal_exactly_when_the_table_says(
    current: JobStatus, target: JobStatus
) -> None:
    if (current, target) in LEGAL:
        assert jobs.check_transition(current.value, target.value) is target
    else:
        with pytest.raises(IllegalTransitionError) as raised:
            jobs.check_transition(current.value, target)
        assert (raised.value.current, raised.value.target) == (current.value, target)


def test_terminal_and_active_statuses_follow_from_the_table() -> None:
    assert {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED} == jobs.TERMINAL_STATUSES
    # A paused job still needs its files (it resumes): it is active.
    assert {JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED} == (
        jobs.ACTIVE_STATUSES
    )
    assert {value.value for value in JobStatus} == {
        "validating_files",
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "paused",
    }


def test_an_unknown_stored_status_cannot_move() -> None:
    with pytest.raises(IllegalTransitionError):
        jobs.check_transition("archived", JobStatus.RUNNING)


@pytest.fixture()
def job(client: TestClient, alice: dict[str, str], chat_file: dict[str, Any], db: Session) -> Job:
    response = create_job(client, alice, chat_file["id"])
    assert response.status_code == 200, response.text
    row = db.get(Job, response.json()["id"])
    assert row is not None and row.status == JobStatus.QUEUED
    return row


def _events(db: Session, job_id: str) -> list[str]:
    return [e.message for e in db.query(JobEvent).filter_by(job_id=job_id).order_by(JobEvent.seq)]


def test_transition_on_a_held_row_stamps_finished_at_and_adds_its_event(db: Session, job: Job) -> None:
    jobs.transition(
        db,
        job,
        JobStatus.FAILED,
        "broken",
        level=jobs.EventLevel.ERROR,
        error={"code": "x", "message": "broken", "param": None},
    )
    db.commit()
    db.refresh(job)
    assert job.status == "failed" and job.finished_at is not None and job.error is not None
    assert _events(db, job.id)[-1] == "broken"
    with pytest.raises(IllegalTransitionError):
        jobs.transition(db, job, JobStatus.RUNNING, "never")
    assert job.status == "failed"


def test_transition_where_is_a_compare_and_set(db: Session, job: Job) -> None:
    before = _events(db, job.id)
    # The job is queued, not running: the CAS matches no row, and no event is written.
    assert not jobs.transition_where(db, job.id, JobStatus.RUNNING, JobStatus.SUCCEEDED, "done")
    assert jobs.transition_where(
        db, job.id, JobStatus.QUEUED, JobStatus.RUNNING, "started", values={"worker_id": "w:1"}
    )
    db.commit()
    db.refresh(job)
    assert job.status == "running" and job.worker_id == "w:1" and job.finished_at is None
    assert _events(db, job.id) == [*before, "started"]
    # An illegal move raises before the database is asked anything.
    with pytest.raises(IllegalTransitionError):
        jobs.transition_where(db, job.id, JobStatus.SUCCEEDED, JobStatus.RUNNING, "again")


def test_cancelling_a_finished_job_raises_the_typed_error_and_changes_nothing(db: Session, job: Job) -> None:
    jobs.request_cancel(db, job)
    db.commit()
    assert job.status == "cancelled" and job.cancel_requested
    with pytest.raises(jobs.JobNotCancellableError) as raised:
        jobs.request_cancel(db, job)
    assert raised.value.current == "cancelled"
