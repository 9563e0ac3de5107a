"""The worker's W&B run of a job with a `wandb` integration: a real (tiny) training job run in-process by
`run_claimed_job`, with W&B in offline mode, then the offline run's transaction log read back."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import wandb
import wandb_records
from api_helpers import create_job
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

from lorasp_core.train_config import ProgressEvent
from lorasp_service import jobs
from lorasp_service.integrations.wandb_logger import integration_callbacks
from lorasp_service.jobs.events import EventType
from lorasp_service.orm import Job, JobEvent
from lorasp_service.settings import Settings
from lorasp_service.training import run_claimed_job

WORKER = "test-host:wandb"
SECRET = "wandb-key-that-must-never-be-echoed"
INTEGRATION = [{"type": "wandb", "wandb": {"project": "lorasp-tests", "tags": ["nightly"]}}]


@pytest.fixture()
def offline_wandb(api_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    monkeypatch.setattr(api_settings, "wandb_mode", "offline")
    monkeypatch.setattr(api_settings, "wandb_dir", tmp_path / "wandb")
    monkeypatch.setattr(api_settings, "wandb_api_key", SecretStr(SECRET))
    return api_settings


def run_job(
    client: TestClient, headers: dict[str, str], settings: Settings, file_id: str, on_worker: Any = None
) -> str:
    """Create the job through the API, then run it as a worker would (`on_worker` first: what differs
    on the worker's machine)."""
    created = create_job(
        client, headers, file_id, integrations=INTEGRATION, hyperparameters={"n_epochs": 2}, suffix="wb"
    )
    assert created.status_code == 200, created.text
    job_id = str(created.json()["id"])
    if on_worker is not None:
        on_worker()
    claim = jobs.claim_job(settings, job_id, WORKER)
    assert claim.runs, claim
    assert run_claimed_job(settings, job_id, WORKER, claim) == jobs.JobStatus.SUCCEEDED
    return job_id


def offline_runs(settings: Settings, job_id: str) -> list[Path]:
    assert settings.wandb_dir is not None
    return sorted(settings.wandb_dir.glob(f"wandb/offline-run-*-{job_id}/run-{job_id}.wandb"))


def metrics_events(db: Session, job_id: str) -> list[dict[str, Any]]:
    statement = select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == EventType.METRICS)
    return [dict(data) for data in db.scalars(statement.order_by(JobEvent.seq))]


def test_a_job_logs_its_config_and_every_steps_metrics_to_its_wandb_run(
    client: TestClient, alice: dict[str, str], chat_file: dict[str, Any], offline_wandb: Settings, db: Session
) -> None:
    job_id = run_job(client, alice, offline_wandb, chat_file["id"])
    (path,) = offline_runs(offline_wandb, job_id)
    found = wandb_records.finished_records(path)

    (run,) = wandb_records.of_type(found, "run")
    assert run.run_id == job_id and run.project == "lorasp-tests" and run.display_name == job_id
    assert list(run.tags) == ["lorasp/finetune", "lorasp/tiny-random-llama", f"lorasp/{job_id}", "nightly"]
    config = wandb_records.config(found)
    job = db.get(Job, job_id)
    assert job is not None
    assert config["job_id"] == job_id and config["base_model"] == "tiny-random-llama"
    assert config["hyperparameters"] == job.method[job.method["type"]]["hyperparameters"]
    assert config["hyperparameters"]["n_epochs"] == 2 and config["total_steps"] == 8  # 4 examples, batch 1

    events = metrics_events(db, job_id)
    logged = wandb_records.history(found)
    assert [entry["_step"] for entry in logged] == [event["step"] for event in events] == list(range(1, 9))
    for entry, event in zip(logged, events, strict=True):
        assert entry["train_loss"] == pytest.approx(event["train_loss"])
        assert entry["learning_rate"] == pytest.approx(event["learning_rate"])
        assert entry["trained_tokens"] == event["trained_tokens"]
    (exit_record,) = wandb_records.of_type(found, "exit")
    assert exit_record.exit_code == 0
    assert wandb_records.summary(found)["lorasp/status"] == "succeeded"
    assert SECRET not in path.read_bytes().decode("latin-1")


@pytest.mark.parametrize(
    ("verb", "status", "exit_code"), [("cancel", "cancelled", 130), ("pause", "paused", 0)]
)
def test_a_job_stopped_by_its_user_finishes_its_run_with_how_it_ended(
    client: TestClient,
    alice: dict[str, str],
    chat_file: dict[str, Any],
    offline_wandb: Settings,
    verb: str,
    status: str,
    exit_code: int,
) -> None:
    """A cancelled job's run is not shown as finished (W&B: failed, exit 130); a paused one is
    finished with exit 0, since resuming continues the same run."""
    created = create_job(
        client, alice, chat_file["id"], integrations=INTEGRATION, hyperparameters={"n_epochs": 2}
    )
    assert created.status_code == 200, created.text
    job_id = str(created.json()["id"])
    claim = jobs.claim_job(offline_wandb, job_id, WORKER)
    assert claim.runs, claim
    # Asked while running, before the first step: the trainer stops at its first stop check.
    asked = client.post(f"/v1/fine_tuning/jobs/{job_id}/{verb}", headers=alice)
    assert asked.status_code == 200, asked.text
    assert run_claimed_job(offline_wandb, job_id, WORKER, claim) == jobs.JobStatus(status)
    (path,) = offline_runs(offline_wandb, job_id)
    found = wandb_records.finished_records(path)
    (exit_record,) = wandb_records.of_type(found, "exit")
    assert exit_record.exit_code == exit_code
    assert wandb_records.summary(found)["lorasp/status"] == status


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        ("refused key", "AuthenticationError: API key [redacted] is not valid"),
        ("no package", "install lorasp[wandb]"),
    ],
)
def test_a_wandb_failure_is_a_warning_event_and_never_fails_the_job(
    client: TestClient,
    alice: dict[str, str],
    chat_file: dict[str, Any],
    offline_wandb: Settings,
    db: Session,
    monkeypatch: pytest.MonkeyPatch,
    breakage: str,
    reason: str,
) -> None:
    def refuse(**_: Any) -> None:
        raise wandb.errors.AuthenticationError(f"API key {SECRET} is not valid")

    def break_wandb() -> None:
        if breakage == "refused key":
            monkeypatch.setattr(wandb, "init", refuse)
        else:  # the API has the extra, this worker not: `import wandb` raises ImportError
            monkeypatch.setitem(sys.modules, "wandb", None)

    job_id = run_job(client, alice, offline_wandb, chat_file["id"], break_wandb)  # succeeds all the same
    statement = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.level == "warn")
    (warning,) = db.scalars(statement).all()
    assert warning.message.startswith("Weights & Biases: could not start the run")
    assert reason in warning.message and SECRET not in warning.message
    assert len(metrics_events(db, job_id)) == 8 and offline_runs(offline_wandb, job_id) == []


def test_a_run_whose_training_raised_is_finished_as_failed(offline_wandb: Settings) -> None:
    job = Job(
        id="ftjob-wandb-raised",
        model="tiny-random-llama",
        method={"type": "supervised"},
        hyperparameters={"n_epochs": 1},
        seed=0,
        training_file_id="file-x",
        integrations=INTEGRATION,
    )
    event = ProgressEvent(
        step=1,
        total_steps=3,
        epoch=0.3,
        train_loss=2.5,
        learning_rate=1e-3,
        tokens_per_second=10.0,
        elapsed_seconds=0.1,
        eta_seconds=None,
        trained_tokens=7,
    )
    with (
        pytest.raises(RuntimeError, match="out of memory"),
        integration_callbacks(offline_wandb, job) as found,
    ):
        (callback,) = found.callbacks
        callback.on_train_begin(3)
        callback.on_progress(event)
        raise RuntimeError("out of memory")
    (path,) = offline_runs(offline_wandb, job.id)
    records = wandb_records.finished_records(path)
    assert [entry["train_loss"] for entry in wandb_records.history(records)] == [2.5]
    assert "eta_seconds" not in wandb_records.history(records)[0]  # unmeasured, not logged as null
    (exit_record,) = wandb_records.of_type(records, "exit")
    assert exit_record.exit_code == 1
    assert wandb_records.summary(records)["lorasp/status"] == "failed"
