"""/v1/fine_tuning/jobs: creation (validation, resolved spec, commit then enqueue), paging, cancel."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import EnqueueRecorder, assert_error, chat_rows, classification_rows, jsonl, upload
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from lorasp_service.jobs import TrainingSpec
from lorasp_service.orm import Job

JOBS = "/v1/fine_tuning/jobs"


def job_training_hyperparameters(job: Job | None) -> dict[str, Any]:
    """The resolved knobs as stored on the job (the JSON shape the worker reads back)."""
    assert job is not None
    return dict(job.method[job.method["type"]]["hyperparameters"])


def create(client: TestClient, headers: dict[str, str], **body: Any) -> Any:
    return client.post(JOBS, headers=headers, json=body)


def test_create_job_returns_openai_job_commits_and_enqueues(
    client: TestClient,
    alice: dict[str, str],
    chat_file: dict[str, Any],
    enqueue_recorder: EnqueueRecorder,
    db: Session,
) -> None:
    response = create(
        client,
        alice,
        model="tiny-random-llama",
        training_file=chat_file["id"],
        suffix="my-bot",
        seed=7,
        metadata={"team": "nlp"},
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["id"].startswith("ftjob-") and job["object"] == "fine_tuning.job"
    assert job["status"] == "queued"
    assert job["model"] == "tiny-random-llama" and job["training_file"] == chat_file["id"]
    assert job["validation_file"] is None and job["fine_tuned_model"] is None and job["error"] is None
    # "auto" for a 4-example file (docs/api.md): 100 // 4 = 25 epochs (the cap), a batch of 1.
    assert job["hyperparameters"] == {"n_epochs": 25, "batch_size": 1, "learning_rate_multiplier": 1.0}
    assert job["seed"] == 7 and job["metadata"] == {"team": "nlp"} and job["user_provided_suffix"] == "my-bot"
    assert job["organization_id"] == alice["X-Tenant-Id"] and job["result_files"] == []
    assert job["method"]["type"] == "supervised"
    assert enqueue_recorder.job_ids == [job["id"]]
    row = db.get(Job, job["id"])
    assert row is not None and row.status == "queued"
    resolved = job_training_hyperparameters(row)
    assert resolved["rank"] == 8 and resolved["freeze_ratio"] == 0.5 and resolved["mask_seed"] == 7
    assert resolved["effective_learning_rate"] == pytest.approx(1e-3)
    messages = [e["message"] for e in client.get(f"{JOBS}/{job['id']}/events", headers=alice).json()["data"]]
    assert messages[0] == "Files validated, moving job to queued state"
    assert messages[-1].startswith("Created fine-tuning job") and len(messages) == 3


@pytest.mark.parametrize(
    ("rows", "given", "echoed"),
    [
        # 20 examples: 100 // 20 = 5 epochs so that ~100 examples are seen; 0.2% of 20, rounded up: 1.
        (20, {}, {"n_epochs": 5, "batch_size": 1, "learning_rate_multiplier": 1.0}),
        (
            20,
            {"n_epochs": "auto", "batch_size": 2},
            {"n_epochs": 5, "batch_size": 2, "learning_rate_multiplier": 1.0},
        ),
        # 40 examples: 3 epochs already see 120, the default stands.
        (
            40,
            {"learning_rate_multiplier": 2},
            {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 2.0},
        ),
    ],
)
def test_auto_hyperparameters_follow_the_training_file_size(
    client: TestClient,
    alice: dict[str, str],
    db: Session,
    rows: int,
    given: dict[str, Any],
    echoed: dict[str, Any],
) -> None:
    training = upload(client, alice, jsonl(chat_rows(rows))).json()
    method = {"type": "supervised", "supervised": {"hyperparameters": given}}
    response = create(client, alice, model="tiny-random-llama", training_file=training["id"], method=method)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["hyperparameters"] == echoed
    resolved = job["method"]["supervised"]["hyperparameters"]
    assert {name: resolved[name] for name in echoed} == echoed
    row = db.get(Job, job["id"])
    assert row is not None
    train = TrainingSpec.from_job(row).to_train_config("causal-lm")  # what the worker will train with
    assert (train.epochs, train.batch_size) == (echoed["n_epochs"], echoed["batch_size"])


def test_lorasp_method_hyperparameters_are_resolved_and_win(
    client: TestClient, alice: dict[str, str], classification_file: dict[str, Any], db: Session
) -> None:
    method = {
        "type": "lorasp",
        "lorasp": {
            "hyperparameters": {
                "rank": 4,
                "alpha": 8,
                "freeze_ratio": 0.25,
                "target_modules": ["query", "value"],
                "learning_rate": 0.002,
                "learning_rate_multiplier": 0.5,
                "n_epochs": 2,
                "batch_size": "auto",
            }
        },
    }
    response = create(
        client,
        alice,
        model="tiny-random-bert",
        training_file=classification_file["id"],
        hyperparameters={"n_epochs": 9, "batch_size": 4},
        method=method,
    )
    assert response.status_code == 200, response.text
    job = response.json()
    # The method's n_epochs beats the top-level one; batch_size "auto" falls back to the top-level 4.
    assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    resolved = job_training_hyperparameters(db.get(Job, job["id"]))
    assert resolved["rank"] == 4 and resolved["alpha"] == 8.0 and resolved["freeze_ratio"] == 0.25
    assert resolved["target_modules"] == ["query", "value"]
    assert resolved["effective_learning_rate"] == pytest.approx(0.001)
    assert job["method"]["lorasp"]["hyperparameters"]["rank"] == 4


@pytest.mark.parametrize(
    ("body_update", "status", "param"),
    [
        ({"model": "gpt-4o"}, 400, "model"),
        ({"training_file": "file-missing"}, 404, "training_file"),
        ({"validation_file": "file-missing"}, 404, "validation_file"),
        ({"model": "tiny-random-bert"}, 400, "training_file"),  # chat data for a classifier
        ({"hyperparameters": {"n_epochs": 0}}, 400, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"n_epochs": "3"}}, 400, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"batch_size": 1.5}}, 400, "hyperparameters.batch_size"),
        (
            {"hyperparameters": {"learning_rate_multiplier": -1}},
            400,
            "hyperparameters.learning_rate_multiplier",
        ),
        ({"hyperparameters": {"warmup": 1}}, 400, "hyperparameters.warmup"),
        (
            {"method": {"type": "lorasp", "lorasp": {"hyperparameters": {"freeze_ratio": 1.0}}}},
            400,
            "method.lorasp.hyperparameters.freeze_ratio",
        ),
        (
            {"method": {"type": "lorasp", "lorasp": {"hyperparameters": {"rank": 65}}}},
            400,
            "method.lorasp.hyperparameters.rank",
        ),
        (
            {"method": {"type": "lorasp", "lorasp": {"hyperparameters": {"target_modules": []}}}},
            400,
            "method.lorasp.hyperparameters.target_modules",
        ),
        # Modules the base model lacks (or that are not linear) are refused here, not in the worker.
        (
            {
                "method": {
                    "type": "lorasp",
                    "lorasp": {"hyperparameters": {"target_modules": ["nonexistent_proj"]}},
                }
            },
            400,
            "method.lorasp.hyperparameters.target_modules",
        ),
        (
            {
                "method": {
                    "type": "lorasp",
                    "lorasp": {"hyperparameters": {"target_modules": ["embed_tokens"]}},
                }
            },
            400,
            "method.lorasp.hyperparameters.target_modules",
        ),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"rank": 4}}}},
            400,
            "method.supervised.hyperparameters.rank",
        ),
        ({"method": {"type": "dpo"}}, 400, "training_file"),  # a dpo job needs preference data
        ({"method": {"type": "dpo", "supervised": {}}}, 400, "method"),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}},
            400,
            "method.dpo.hyperparameters.beta",
        ),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"rank": 4}}}},
            400,
            "method.dpo.hyperparameters.rank",
        ),
        ({"method": {"type": "reinforcement"}}, 400, "method.type"),
        ({"method": {"type": "lorasp", "supervised": {}}}, 400, "method"),
        ({"suffix": "x" * 65}, 400, "suffix"),
        ({"suffix": "has:colon"}, 400, "suffix"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
        ({"seed": -1}, 400, "seed"),
        ({"unknown_field": 1}, 400, "unknown_field"),
    ],
)
def test_invalid_job_requests_name_the_param(
    client: TestClient,
    alice: dict[str, str],
    chat_file: dict[str, Any],
    enqueue_recorder: EnqueueRecorder,
    body_update: dict[str, Any],
    status: int,
    param: str,
) -> None:
    body = {"model": "tiny-random-llama", "training_file": chat_file["id"], **body_update}
    assert_error(client.post(JOBS, headers=alice, json=body), status, param=param)
    assert enqueue_recorder.job_ids == []


def test_a_missing_target_module_is_named(
    client: TestClient, alice: dict[str, str], chat_file: dict[str, Any], enqueue_recorder: EnqueueRecorder
) -> None:
    method = {
        "type": "lorasp",
        "lorasp": {"hyperparameters": {"target_modules": ["q_proj", "nonexistent_proj"]}},
    }
    body = {"model": "tiny-random-llama", "training_file": chat_file["id"], "method": method}
    error = assert_error(
        client.post(JOBS, headers=alice, json=body), 400, param="method.lorasp.hyperparameters.target_modules"
    )
    assert "nonexistent_proj" in error["message"] and "q_proj" not in error["message"]
    assert enqueue_recorder.job_ids == []


def test_missing_required_fields_and_bad_json(client: TestClient, alice: dict[str, str]) -> None:
    error = assert_error(
        client.post(JOBS, headers=alice, json={"model": "tiny-random-llama"}), 400, param="training_file"
    )
    assert "Missing required parameter" in error["message"]
    error = assert_error(
        client.post(JOBS, headers={**alice, "Content-Type": "application/json"}, content=b"{nope"), 400
    )
    assert "JSON" in error["message"] and error["param"] is None
    assert_error(client.post(JOBS, headers=alice, json=[1, 2]), 400)


def test_validation_file_labels_must_be_known_to_training(
    client: TestClient, alice: dict[str, str], classification_file: dict[str, Any]
) -> None:
    validation_rows = jsonl(classification_rows(("neg", "meh")))
    validation = upload(client, alice, validation_rows, filename="val.jsonl").json()
    response = create(
        client,
        alice,
        model="tiny-random-bert",
        training_file=classification_file["id"],
        validation_file=validation["id"],
    )
    error = assert_error(response, 400, param="validation_file")
    assert "meh" in error["message"]


def test_broker_failure_fails_the_job_visibly(
    client: TestClient, alice: dict[str, str], chat_file: dict[str, Any], enqueue_recorder: EnqueueRecorder
) -> None:
    enqueue_recorder.fail = True
    assert_error(
        create(client, alice, model="tiny-random-llama", training_file=chat_file["id"]),
        503,
        code="queue_unavailable",
    )
    newest = client.get(f"{JOBS}?limit=1", headers=alice).json()["data"][0]
    assert newest["status"] == "failed" and newest["error"]["code"] == "queue_unavailable"


def test_jobs_list_pages_newest_first(client: TestClient, make_tenant: Any) -> None:
    carol = make_tenant()
    file_id = upload(client, carol, jsonl(chat_rows())).json()["id"]
    ids = [
        create(client, carol, model="tiny-random-llama", training_file=file_id).json()["id"] for _ in range(5)
    ]
    seen, after, pages = [], None, 0
    while True:
        query = f"?limit=2{'' if after is None else f'&after={after}'}"
        page = client.get(JOBS + query, headers=carol).json()
        pages += 1
        seen += [job["id"] for job in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == ids[::-1] and pages == 3
    assert client.get(JOBS, headers=carol).json()["data"][0]["id"] == ids[-1]
    assert_error(client.get(f"{JOBS}?after=ftjob-nope", headers=carol), 404, param="after")


def test_get_unknown_job_is_404(client: TestClient, alice: dict[str, str]) -> None:
    assert_error(client.get(f"{JOBS}/ftjob-nope", headers=alice), 404, code="not_found")
    assert_error(client.post(f"{JOBS}/ftjob-nope/cancel", headers=alice), 404)


def test_cancel_transitions(
    client: TestClient, alice: dict[str, str], chat_file: dict[str, Any], db: Session
) -> None:
    queued = create(client, alice, model="tiny-random-llama", training_file=chat_file["id"]).json()
    cancelled = client.post(f"{JOBS}/{queued['id']}/cancel", headers=alice)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert_error(client.post(f"{JOBS}/{queued['id']}/cancel", headers=alice), 400, code="job_not_cancellable")
    events = client.get(f"{JOBS}/{queued['id']}/events", headers=alice).json()["data"]
    assert events[0]["message"] == "Fine-tuning job cancelled"

    running = create(client, alice, model="tiny-random-llama", training_file=chat_file["id"]).json()
    row = db.get(Job, running["id"])
    assert row is not None
    row.status = "running"
    db.commit()
    response = client.post(f"{JOBS}/{running['id']}/cancel", headers=alice).json()
    assert response["status"] == "running" and response["cancel_requested"] is True
    db.refresh(row)
    assert row.cancel_requested is True and row.status == "running"

    row.status = "succeeded"
    db.commit()
    finished = client.post(f"{JOBS}/{running['id']}/cancel", headers=alice)
    assert_error(finished, 400, code="job_not_cancellable")


def test_default_enqueue_calls_the_queue_with_the_apps_settings(
    api_settings: Any, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import lorasp_service.queue
    from api.main import create_app

    sent: list[tuple[Any, str]] = []
    monkeypatch.setattr(
        lorasp_service.queue, "enqueue_job", lambda settings, job_id: sent.append((settings, job_id))
    )
    with TestClient(create_app(api_settings)) as client:
        file_id = upload(client, alice, jsonl(chat_rows())).json()["id"]
        job = create(client, alice, model="tiny-random-llama", training_file=file_id).json()
    assert sent == [(api_settings, job["id"])]
