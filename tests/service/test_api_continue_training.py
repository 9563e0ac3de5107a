"""Continued training at the API (recorded enqueue, no worker): `model` may be a fine-tuned model of the
tenant; the job trains on its base model with the parent's LoRA-SP structure, refuses a different one
by the field's name, refuses data of another task or with labels the parent lacks, and another tenant's
model id answers exactly as an unknown one does."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from adapter_helpers import PARENT_LABELS, bert_parent_dir, llama_parent_dir, register_adapter
from api_helpers import EnqueueRecorder, assert_error, chat_rows, classification_rows, jsonl, upload
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from lorasp_service.orm import Adapter, Job
from lorasp_service.settings import Settings

JOBS = "/v1/fine_tuning/jobs"


@pytest.fixture(scope="module")
def parent_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parents")
    return {"llama": llama_parent_dir(root), "bert": bert_parent_dir(root)}


@pytest.fixture()
def tenant(make_tenant: Callable[[], dict[str, str]]) -> dict[str, str]:
    return make_tenant()


@pytest.fixture()
def parent(
    db: Session, api_settings: Settings, tenant: dict[str, str], parent_dirs: dict[str, Path]
) -> Adapter:
    return register_adapter(db, api_settings, tenant["X-Tenant-Id"], parent_dirs["llama"])


def _openai(client: TestClient, tenant: dict[str, str]) -> openai.OpenAI:
    key = tenant["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=client, max_retries=0)


def _file(client: TestClient, tenant: dict[str, str], rows: list[Any]) -> str:
    response = upload(client, tenant, jsonl(rows))
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _lorasp(**hyperparameters: Any) -> dict[str, Any]:
    return {"type": "lorasp", "lorasp": {"hyperparameters": hyperparameters}}


def test_a_job_from_a_fine_tuned_model_inherits_its_structure_and_trains_its_base(
    client: TestClient,
    tenant: dict[str, str],
    parent: Adapter,
    db: Session,
    enqueue_recorder: EnqueueRecorder,
) -> None:
    api = _openai(client, tenant)
    uploaded = api.files.create(file=("t.jsonl", io.BytesIO(jsonl(chat_rows()))), purpose="fine-tune")
    job = api.fine_tuning.jobs.create(model=parent.id, training_file=uploaded.id, seed=5, suffix="child")
    assert job.status == "queued" and job.model == parent.id  # echoed as sent, as OpenAI does
    resolved = job.method.model_dump()["supervised"]["hyperparameters"]
    assert (resolved["rank"], resolved["freeze_ratio"], resolved["mask_seed"]) == (4, 0.25, 77)
    assert resolved["target_modules"] == ["q_proj", "v_proj"] and resolved["alpha"] == 8.0
    assert job.seed == 5  # the child's own seed: only the mask seed is the parent's
    assert api.fine_tuning.jobs.retrieve(job.id).model == parent.id
    row = db.get(Job, job.id)
    assert row is not None and (row.model, row.parent_model) == ("tiny-random-llama", parent.id)
    assert enqueue_recorder.job_ids == [job.id]


def test_restating_the_parents_structure_is_accepted(
    client: TestClient, tenant: dict[str, str], parent: Adapter
) -> None:
    training = _file(client, tenant, chat_rows())
    # Another spelling of the same modules: full names select the same layers as the leaf names.
    targets = [f"model.layers.{layer}.self_attn.{name}" for layer in (0, 1) for name in ("v_proj", "q_proj")]
    method = _lorasp(rank=4, freeze_ratio=0.25, mask_seed=77, target_modules=targets, alpha=2.0)
    body = {"model": parent.id, "training_file": training, "method": method}
    response = client.post(JOBS, headers=tenant, json=body)
    assert response.status_code == 200, response.text
    resolved = response.json()["method"]["lorasp"]["hyperparameters"]
    assert resolved["alpha"] == 2.0 and resolved["mask_seed"] == 77  # alpha may change, the mask not


@pytest.mark.parametrize(
    ("name", "value", "parents"),
    [
        ("rank", 8, "4"),
        ("freeze_ratio", 0.5, "0.25"),
        ("mask_seed", 5, "77"),
        ("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"], "['q_proj', 'v_proj']"),
        ("target_modules", "all-linear", "['q_proj', 'v_proj']"),
    ],
)
def test_a_different_structure_is_refused_naming_the_field_and_the_parents_value(
    client: TestClient, tenant: dict[str, str], parent: Adapter, name: str, value: Any, parents: str
) -> None:
    api = _openai(client, tenant)
    training = _file(client, tenant, chat_rows())
    with pytest.raises(openai.BadRequestError) as refused:
        api.fine_tuning.jobs.create(model=parent.id, training_file=training, method=_lorasp(**{name: value}))
    assert refused.value.param == f"method.lorasp.hyperparameters.{name}"
    assert parents in refused.value.message and parent.id in refused.value.message


def test_another_tenants_model_answers_as_an_unknown_model(
    client: TestClient, make_tenant: Callable[[], dict[str, str]], parent: Adapter
) -> None:
    other = make_tenant()
    training = _file(client, other, chat_rows())
    unknown = parent.id[:-4] + "zzzz"
    theirs = client.post(JOBS, headers=other, json={"model": parent.id, "training_file": training})
    missing = client.post(JOBS, headers=other, json={"model": unknown, "training_file": training})
    error = assert_error(theirs, 400, param="model", code="model_not_available")
    assert_error(missing, 400, param="model", code="model_not_available")
    assert error == {
        **missing.json()["error"],
        "message": missing.json()["error"]["message"].replace(unknown, parent.id),
    }
    assert client.get(JOBS, headers=other).json()["data"] == []


def test_data_of_another_task_is_refused(client: TestClient, tenant: dict[str, str], parent: Adapter) -> None:
    training = _file(client, tenant, classification_rows())
    response = client.post(JOBS, headers=tenant, json={"model": parent.id, "training_file": training})
    assert_error(response, 400, param="training_file", code="invalid_file_format")


def test_a_classifier_continues_on_its_own_labels_only(
    client: TestClient,
    db: Session,
    api_settings: Settings,
    tenant: dict[str, str],
    parent_dirs: dict[str, Path],
) -> None:
    classifier = register_adapter(db, api_settings, tenant["X-Tenant-Id"], parent_dirs["bert"])
    subset = _file(client, tenant, classification_rows(labels=(PARENT_LABELS[1],)))
    response = client.post(JOBS, headers=tenant, json={"model": classifier.id, "training_file": subset})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == classifier.id
    other_labels = _file(client, tenant, classification_rows(labels=("neg", "maybe")))
    response = client.post(JOBS, headers=tenant, json={"model": classifier.id, "training_file": other_labels})
    error = assert_error(response, 400, param="training_file", code="invalid_file_format")
    assert "maybe" in error["message"] and "neg, pos" in error["message"]
    chat = _file(client, tenant, chat_rows())
    response = client.post(JOBS, headers=tenant, json={"model": classifier.id, "training_file": chat})
    assert_error(response, 400, param="training_file", code="invalid_file_format")


def test_a_parent_whose_files_are_gone_is_refused(
    client: TestClient, db: Session, api_settings: Settings, tenant: dict[str, str], parent: Adapter
) -> None:
    for path in sorted((api_settings.blob_dir / parent.storage_key).iterdir()):
        path.unlink()
    training = _file(client, tenant, chat_rows())
    response = client.post(JOBS, headers=tenant, json={"model": parent.id, "training_file": training})
    error = assert_error(response, 400, param="model", code="model_not_available")
    assert str(api_settings.blob_dir) not in error["message"]


def test_a_fresh_job_takes_a_given_mask_seed_and_else_its_seed(
    client: TestClient, tenant: dict[str, str]
) -> None:
    training = _file(client, tenant, chat_rows())
    body = {"model": "tiny-random-llama", "training_file": training, "seed": 3}
    given = client.post(JOBS, headers=tenant, json={**body, "method": _lorasp(mask_seed=9)}).json()
    default = client.post(JOBS, headers=tenant, json={**body, "method": _lorasp()}).json()
    assert given["method"]["lorasp"]["hyperparameters"]["mask_seed"] == 9
    assert default["method"]["lorasp"]["hyperparameters"]["mask_seed"] == 3
    refused = client.post(JOBS, headers=tenant, json={**body, "method": _lorasp(mask_seed=-1)})
    assert_error(refused, 400, param="method.lorasp.hyperparameters.mask_seed")


def test_the_final_step_checkpoint_id_continues_from_the_final_model(
    client: TestClient,
    db: Session,
    api_settings: Settings,
    tenant: dict[str, str],
    parent_dirs: dict[str, Path],
) -> None:
    training = _file(client, tenant, chat_rows())
    made = client.post(JOBS, headers=tenant, json={"model": "tiny-random-llama", "training_file": training})
    assert client.post(f"{JOBS}/{made.json()['id']}/cancel", headers=tenant).status_code == 200
    final = register_adapter(
        db, api_settings, tenant["X-Tenant-Id"], parent_dirs["llama"], job_id=made.json()["id"], step=4
    )
    response = client.post(
        JOBS, headers=tenant, json={"model": f"{final.id}:ckpt-step-4", "training_file": training}
    )
    assert response.status_code == 200, response.text
    row = db.get(Job, response.json()["id"])
    assert row is not None and row.parent_model == final.id  # the one adapter both ids name
    resolved = response.json()["method"]["supervised"]["hyperparameters"]
    assert (resolved["rank"], resolved["mask_seed"]) == (4, 77)
    wrong_step = {"model": f"{final.id}:ckpt-step-3", "training_file": training}
    assert_error(
        client.post(JOBS, headers=tenant, json=wrong_step), 400, param="model", code="model_not_available"
    )
