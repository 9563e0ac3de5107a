"""`integrations` of POST /v1/fine_tuning/jobs: OpenAI's wandb shape, what a deployment must have for it
(the wandb package, a W&B key unless runs are offline), and the job echoing what it accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from api_helpers import EnqueueRecorder, assert_error, create_job
from fastapi.testclient import TestClient
from openai.types.fine_tuning import FineTuningJob
from pydantic import SecretStr

from api.services import job_integrations
from lorasp_service.settings import Settings

JOBS = "/v1/fine_tuning/jobs"
SECRET = "wandb-key-that-must-never-be-echoed"


def wandb(**params: Any) -> list[dict[str, Any]]:
    return [{"type": "wandb", "wandb": {"project": "lorasp-tests", **params}}]


@pytest.fixture()
def offline_wandb(api_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    monkeypatch.setattr(api_settings, "wandb_mode", "offline")
    monkeypatch.setattr(api_settings, "wandb_dir", tmp_path / "wandb")
    return api_settings


BAD_INTEGRATIONS = [
    ([{"type": "slack", "slack": {"channel": "x"}}], "integrations.0.type"),
    ([{"type": "wandb"}], "integrations.0.wandb"),
    ([{"type": "wandb", "wandb": {}}], "integrations.0.wandb.project"),
    (wandb(api_key="sk-x"), "integrations.0.wandb.api_key"),  # the key is the deployment's, never a job's
    ([{"type": "wandb", "wandb": {"project": "a/b"}}], "integrations.0.wandb.project"),
    ([{"type": "wandb", "wandb": {"project": ""}}], "integrations.0.wandb.project"),
    ([{"type": "wandb", "wandb": {"project": 5}}], "integrations.0.wandb.project"),
    (wandb(entity="team:x"), "integrations.0.wandb.entity"),
    (wandb(name="line\nbreak"), "integrations.0.wandb.name"),
    (wandb(name="x" * 129), "integrations.0.wandb.name"),
    (wandb(tags="one"), "integrations.0.wandb.tags"),
    (wandb(tags=[1]), "integrations.0.wandb.tags.0"),
    (wandb(tags=["t" * 65]), "integrations.0.wandb.tags.0"),
    (wandb(tags=[f"t{i}" for i in range(33)]), "integrations.0.wandb.tags"),
    (wandb() + wandb(), "integrations"),
    ({"type": "wandb"}, "integrations"),
]


@pytest.mark.parametrize(("integrations", "param"), BAD_INTEGRATIONS)
def test_malformed_integrations_are_400_naming_the_field(
    client: TestClient,
    alice: dict[str, str],
    chat_file: dict[str, Any],
    offline_wandb: Settings,
    enqueue_recorder: EnqueueRecorder,
    integrations: Any,
    param: str,
) -> None:
    response = create_job(client, alice, chat_file["id"], integrations=integrations)
    assert_error(response, 400, param=param)
    assert enqueue_recorder.job_ids == []


def test_the_job_echoes_its_integrations_as_openai_does(
    client: TestClient, alice: dict[str, str], chat_file: dict[str, Any], offline_wandb: Settings
) -> None:
    created = create_job(client, alice, chat_file["id"], integrations=wandb(tags=["a", "b"], entity="team"))
    assert created.status_code == 200, created.text
    expected = [
        {
            "type": "wandb",
            "wandb": {"project": "lorasp-tests", "name": None, "entity": "team", "tags": ["a", "b"]},
        }
    ]
    job_id = created.json()["id"]
    fetched = client.get(f"{JOBS}/{job_id}", headers=alice).json()
    listed = [job for job in client.get(JOBS, headers=alice).json()["data"] if job["id"] == job_id]
    for job in (created.json(), fetched, listed[0]):
        assert job["integrations"] == expected
    parsed = FineTuningJob.model_validate(fetched)  # the official client's type reads it
    assert parsed.integrations is not None and parsed.integrations[0].wandb.tags == ["a", "b"]

    plain = create_job(client, alice, chat_file["id"])
    assert plain.status_code == 200 and plain.json()["integrations"] is None


def test_without_the_wandb_extra_a_wandb_job_is_400_saying_what_to_install(
    client: TestClient,
    alice: dict[str, str],
    chat_file: dict[str, Any],
    offline_wandb: Settings,
    enqueue_recorder: EnqueueRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(job_integrations, "wandb_installed", lambda: False)
    response = create_job(client, alice, chat_file["id"], integrations=wandb())
    error = assert_error(response, 400, param="integrations.0.type", code="integration_unavailable")
    assert "lorasp[wandb]" in error["message"]
    assert enqueue_recorder.job_ids == []
    # A job without integrations does not need the extra.
    assert create_job(client, alice, chat_file["id"]).status_code == 200


def test_online_wandb_needs_the_deployments_key_which_is_never_echoed(
    client: TestClient,
    alice: dict[str, str],
    chat_file: dict[str, Any],
    api_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert api_settings.wandb_mode == "online" and api_settings.wandb_api_key is None
    refused = create_job(client, alice, chat_file["id"], integrations=wandb())
    error = assert_error(refused, 400, param="integrations.0.type", code="integration_unavailable")
    assert "API key" in error["message"] and "LORASP_WANDB_API_KEY" in error["message"]

    monkeypatch.setattr(api_settings, "wandb_api_key", SecretStr(SECRET))
    created = create_job(client, alice, chat_file["id"], integrations=wandb())
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]
    answers = [
        created.text,
        client.get(f"{JOBS}/{job_id}", headers=alice).text,
        client.get(f"{JOBS}/{job_id}/events", headers=alice).text,
    ]
    assert all(SECRET not in answer for answer in answers)
    assert SECRET not in repr(api_settings) and SECRET not in str(api_settings.model_dump())
