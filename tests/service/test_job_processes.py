"""A job's `processes` option: validated by the API (400 naming the field), stored in the spec, and run
by `run_claimed_job` as rank 0 plus child ranks that stop with the job (cancel, a killed rank).

Real (tiny) jobs run in-process, as in test_job_precision; the child ranks are real processes.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from api_helpers import assert_error, create_job
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from lorasp_core.train_config import ProgressEvent
from lorasp_service import jobs, rank_processes, training_progress
from lorasp_service.orm import Job
from lorasp_service.rank_processes import live_rank_pids
from lorasp_service.settings import Settings
from lorasp_service.training import run_claimed_job
from lorasp_service.training_progress import JobProgressCallback

WORKER = "test-host:processes"
JOBS = "/v1/fine_tuning/jobs"
PARAM = "method.lorasp.hyperparameters.processes"


def lorasp_method(**hyperparameters: Any) -> dict[str, Any]:
    return {"type": "lorasp", "lorasp": {"hyperparameters": hyperparameters}}


def created_job(client: TestClient, headers: dict[str, str], file_id: str, **knobs: Any) -> str:
    created = create_job(client, headers, file_id, method=lorasp_method(**knobs))
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def run_two_rank_job(
    client: TestClient, headers: dict[str, str], file_id: str, settings: Settings, n_epochs: int
) -> tuple[str, jobs.JobStatus]:
    """Create a 2-process job (global batch 2), claim it and run it here as the worker would."""
    job_id = created_job(client, headers, file_id, processes=2, batch_size=2, n_epochs=n_epochs)
    claim = jobs.claim_job(settings, job_id, WORKER)
    return job_id, run_claimed_job(settings, job_id, WORKER, claim)


def on_step_1(monkeypatch: pytest.MonkeyPatch, action: Any) -> list[int]:
    """Runs `action(job_id)` when rank 0 reports step 1; returns the child ranks seen then."""
    seen: list[int] = []
    original = JobProgressCallback.on_progress

    def on_progress(self: JobProgressCallback, event: ProgressEvent) -> None:
        original(self, event)
        if event.step == 1:
            seen.extend(live_rank_pids(self.job_id))
            action(self.job_id, seen)

    monkeypatch.setattr(JobProgressCallback, "on_progress", on_progress)
    return seen


def test_processes_is_validated_by_the_api(
    client: TestClient, alice: dict[str, str], chat_file: dict[str, Any], api_settings: Settings
) -> None:
    uneven = create_job(client, alice, chat_file["id"], method=lorasp_method(batch_size=3, processes=2))
    assert "batch_size 3" in assert_error(uneven, 400, param=PARAM)["message"]
    too_many = api_settings.max_processes + 1
    refused = create_job(client, alice, chat_file["id"], method=lorasp_method(processes=too_many))
    assert "LORASP_MAX_PROCESSES" not in assert_error(refused, 400, param=PARAM)["message"]
    assert_error(create_job(client, alice, chat_file["id"], method=lorasp_method(processes=0)), 400)


def test_an_auto_batch_size_is_rounded_up_to_a_multiple_of_processes(
    client: TestClient, alice: dict[str, str], chat_file: dict[str, Any], db: Session, api_settings: Settings
) -> None:
    processes = min(3, api_settings.max_processes)
    job_id = created_job(client, alice, chat_file["id"], processes=processes)
    row = db.get(Job, job_id)
    assert row is not None
    spec = jobs.TrainingSpec.from_job(row)
    assert spec.processes == processes and spec.batch_size % processes == 0
    assert spec.to_train_config("causal-lm").processes == processes


def test_a_two_process_job_succeeds_and_leaves_no_rank_behind(
    client: TestClient,
    alice: dict[str, str],
    chat_file: dict[str, Any],
    api_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = on_step_1(monkeypatch, lambda job_id, pids: None)
    job_id, status = run_two_rank_job(client, alice, chat_file["id"], api_settings, n_epochs=1)
    assert status == jobs.JobStatus.SUCCEEDED
    assert len(seen) == 1  # rank 1 ran beside rank 0 (this process)
    assert live_rank_pids(job_id) == []
    shown = client.get(f"{JOBS}/{job_id}", headers=alice).json()
    assert shown["method"]["lorasp"]["hyperparameters"]["processes"] == 2
    assert shown["trained_tokens"] > 0


def test_cancel_stops_every_rank(
    client: TestClient,
    alice: dict[str, str],
    chat_file: dict[str, Any],
    api_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(training_progress, "CANCEL_POLL_INTERVAL_SECONDS", 0.0)

    def cancel(job_id: str, pids: list[int]) -> None:
        assert client.post(f"{JOBS}/{job_id}/cancel", headers=alice).status_code == 200

    seen = on_step_1(monkeypatch, cancel)
    job_id, status = run_two_rank_job(client, alice, chat_file["id"], api_settings, n_epochs=3)
    assert status == jobs.JobStatus.CANCELLED
    assert len(seen) == 1
    assert live_rank_pids(job_id) == []  # rank 1 saw rank 0's cancel and exited; nothing was killed
    shown = client.get(f"{JOBS}/{job_id}", headers=alice).json()
    assert shown["status"] == "cancelled"


def test_a_killed_rank_fails_the_job_and_leaves_no_rank_behind(
    client: TestClient,
    alice: dict[str, str],
    chat_file: dict[str, Any],
    api_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def kill(job_id: str, pids: list[int]) -> None:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        while live_rank_pids(job_id):  # dead (a zombie until rank 0 reaps it)
            time.sleep(0.05)

    seen = on_step_1(monkeypatch, kill)
    job_id, status = run_two_rank_job(client, alice, chat_file["id"], api_settings, n_epochs=3)
    assert status == jobs.JobStatus.FAILED
    assert len(seen) == 1 and live_rank_pids(job_id) == []
    error = client.get(f"{JOBS}/{job_id}", headers=alice).json()["error"]
    assert error["code"] == "training_error"


def test_a_rank_that_fails_to_start_fails_the_job_at_once(
    client: TestClient,
    alice: dict[str, str],
    chat_file: dict[str, Any],
    api_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rank_processes, "RANK_MODULE", "lorasp_service.no_such_module")  # exits 1
    job_id, status = run_two_rank_job(client, alice, chat_file["id"], api_settings, n_epochs=1)
    assert status == jobs.JobStatus.FAILED
    error = client.get(f"{JOBS}/{job_id}", headers=alice).json()["error"]
    assert error["code"] == "training_error"
    assert "rank 1 exited with status 1 before training" in error["message"]
