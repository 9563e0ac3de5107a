"""Preference files and `method: {"type": "dpo"}` jobs through the API: upload validation, the job object's
`method.dpo`, the spec the worker reads back, and which files each method accepts."""

from __future__ import annotations

from typing import Any

from api_helpers import (
    EnqueueRecorder,
    assert_error,
    create_job,
    jsonl,
    preference_rows,
    upload,
)
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from lorasp_service.jobs import TrainingSpec
from lorasp_service.orm import Job


def preference_file(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    response = upload(client, headers, jsonl(preference_rows()), filename="pairs.jsonl")
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_preference_file_uploads_as_preference_data(client: TestClient, alice: dict[str, str]) -> None:
    uploaded = preference_file(client, alice)
    assert uploaded["status"] == "processed"
    assert uploaded["lorasp"]["format"] == "preference" and uploaded["lorasp"]["examples"] == 4


def test_a_bad_preference_file_is_refused_with_its_line_and_field(
    client: TestClient, alice: dict[str, str]
) -> None:
    rows = preference_rows(3)
    rows[1]["preferred_output"].append({"role": "assistant", "content": "also"})
    rows[2]["input"]["messages"].append({"role": "assistant", "content": "early answer"})
    error = assert_error(upload(client, alice, jsonl(rows)), 400)
    assert (
        "line 2: field 'preferred_output': must hold exactly one assistant message, got 2" in error["message"]
    )
    assert "line 3: field 'input.messages[1]'" in error["message"]


def test_a_dpo_job_stores_its_beta_and_trains_with_the_dpo_objective(
    client: TestClient, alice: dict[str, str], enqueue_recorder: EnqueueRecorder, db: Session
) -> None:
    training = preference_file(client, alice)
    method = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 2, "batch_size": 2}}}
    response = create_job(client, alice, training["id"], method=method, seed=5)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.25
    assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 1.0}
    assert enqueue_recorder.job_ids == [job["id"]]
    row = db.get(Job, job["id"])
    assert row is not None
    config = TrainingSpec.from_job(row).to_train_config("causal-lm")  # what the worker trains with
    assert (config.objective, config.dpo_beta, config.epochs, config.batch_size) == ("dpo", 0.25, 2, 2)
    # beta omitted (or "auto") is OpenAI's default 0.1
    default = create_job(
        client, alice, training["id"], method={"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto"}}}
    )
    assert default.status_code == 200, default.text
    assert default.json()["method"]["dpo"]["hyperparameters"]["beta"] == 0.1


def test_each_method_takes_only_its_own_kind_of_file(
    client: TestClient,
    alice: dict[str, str],
    chat_file: dict[str, Any],
    classification_file: dict[str, Any],
    enqueue_recorder: EnqueueRecorder,
) -> None:
    pairs = preference_file(client, alice)
    dpo = {"type": "dpo"}
    error = assert_error(
        create_job(client, alice, chat_file["id"], method=dpo),
        400,
        param="training_file",
        code="invalid_file_format",
    )
    assert "preference" in error["message"]
    for method in (None, {"type": "supervised"}, {"type": "lorasp"}):
        body = {} if method is None else {"method": method}
        error = assert_error(create_job(client, alice, pairs["id"], **body), 400, param="training_file")
        assert "preference dataset" in error["message"]
    # a classifier cannot generate answers to prefer
    assert_error(
        create_job(client, alice, pairs["id"], model="tiny-random-bert", method=dpo),
        400,
        param="training_file",
    )
    assert_error(
        create_job(client, alice, pairs["id"], method=dpo, validation_file=pairs["id"]),
        400,
        param="validation_file",
    )
    assert enqueue_recorder.job_ids == []
