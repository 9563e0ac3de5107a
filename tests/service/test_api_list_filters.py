"""List filters as the official `openai` client sends them: `jobs.list(metadata=...)` and
`files.list(order=..., purpose=...)`; and the `suffix` rule (it becomes part of the model id)."""

from __future__ import annotations

import io
import secrets
from typing import Any

import openai
import pytest
from api_helpers import assert_error, chat_rows, jsonl, upload
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from lorasp_service.orm import File

JOBS = "/v1/fine_tuning/jobs"


def official_client(client: TestClient, headers: dict[str, str]) -> openai.OpenAI:
    key = headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=client, max_retries=0)


def new_job(
    client: TestClient, headers: dict[str, str], file_id: str, metadata: dict[str, str] | None
) -> str:
    body: dict[str, Any] = {"model": "tiny-random-llama", "training_file": file_id, "metadata": metadata}
    response = client.post(JOBS, headers=headers, json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_jobs_list_keeps_only_jobs_whose_metadata_has_every_pair(
    client: TestClient, make_tenant: Any
) -> None:
    carol, dave = make_tenant(), make_tenant()
    file_id = upload(client, carol, jsonl(chat_rows())).json()["id"]
    nlp_prod = new_job(client, carol, file_id, {"team": "nlp", "env": "prod"})
    nlp_dev = new_job(client, carol, file_id, {"team": "nlp", "env": "dev"})
    new_job(client, carol, file_id, {"team": "vision", "env": "prod"})
    new_job(client, carol, file_id, None)
    # Another tenant's job with the same metadata is never listed.
    new_job(
        client, dave, upload(client, dave, jsonl(chat_rows())).json()["id"], {"team": "nlp", "env": "prod"}
    )

    jobs = official_client(client, carol).fine_tuning.jobs
    assert [job.id for job in jobs.list(metadata={"team": "nlp"}).data] == [nlp_dev, nlp_prod]
    assert [job.id for job in jobs.list(metadata={"team": "nlp", "env": "prod"}).data] == [nlp_prod]
    assert jobs.list(metadata={"team": "nlp", "env": "staging"}).data == []
    assert jobs.list(metadata={"owner": "nlp"}).data == []  # a missing key never matches
    assert len(jobs.list().data) == 4
    # Paging keeps the filter.
    first = jobs.list(metadata={"team": "nlp"}, limit=1)
    assert [job.id for job in first.data] == [nlp_dev] and first.has_more
    rest = jobs.list(metadata={"team": "nlp"}, limit=1, after=nlp_dev)
    assert [job.id for job in rest.data] == [nlp_prod] and not rest.has_more


def test_metadata_null_keeps_only_jobs_without_metadata(client: TestClient, make_tenant: Any) -> None:
    carol = make_tenant()
    file_id = upload(client, carol, jsonl(chat_rows())).json()["id"]
    new_job(client, carol, file_id, {"team": "nlp"})
    bare = new_job(client, carol, file_id, None)
    # The literal query string OpenAI documents for "jobs with null metadata".
    listed = client.get(f"{JOBS}?metadata=null", headers=carol).json()["data"]
    assert [job["id"] for job in listed] == [bare]
    combined = client.get(f"{JOBS}?metadata=null&metadata[team]=nlp", headers=carol)
    assert_error(combined, 400, param="metadata")
    assert_error(client.get(f"{JOBS}?metadata=x", headers=carol), 400, param="metadata")


def test_a_bad_metadata_filter_names_the_parameter(client: TestClient, alice: dict[str, str]) -> None:
    assert_error(client.get(f"{JOBS}?metadata[]=x", headers=alice), 400, param="metadata[]")
    too_long = "k" * 65
    assert_error(
        client.get(f"{JOBS}?metadata[{too_long}]=x", headers=alice), 400, param=f"metadata[{too_long}]"
    )
    many = "&".join(f"metadata[k{i}]=v" for i in range(17))
    assert_error(client.get(f"{JOBS}?{many}", headers=alice), 400, param="metadata")


def test_files_list_honours_order_and_purpose(client: TestClient, make_tenant: Any, db: Session) -> None:
    carol = make_tenant()
    sdk = official_client(client, carol)
    ids = [
        sdk.files.create(file=("t.jsonl", io.BytesIO(jsonl(chat_rows(1 + i)))), purpose="fine-tune").id
        for i in range(3)
    ]
    assert [f.id for f in sdk.files.list().data] == ids[::-1]
    assert [f.id for f in sdk.files.list(order="desc").data] == ids[::-1]
    assert [f.id for f in sdk.files.list(order="asc").data] == ids
    # Oldest-first paging: after the first file come the two later ones.
    first = sdk.files.list(order="asc", limit=1)
    assert [f.id for f in first.data] == ids[:1] and first.has_more
    assert [f.id for f in sdk.files.list(order="asc", after=ids[0]).data] == ids[1:]

    # A file of another purpose (results files are written by the server, not uploaded).
    other = File(
        id=f"file-{secrets.token_hex(8)}",
        tenant_id=carol["X-Tenant-Id"],
        filename="r.csv",
        purpose="fine-tune-results",
        bytes=1,
        sha256="0" * 64,
        storage_key=f"results/{secrets.token_hex(8)}",
    )
    db.add(other)
    db.commit()
    assert [f.id for f in sdk.files.list(purpose="fine-tune-results").data] == [other.id]
    assert [f.id for f in sdk.files.list(purpose="fine-tune", order="asc").data] == ids
    assert len(sdk.files.list().data) == 4
    assert_error(client.get("/v1/files?order=sideways", headers=carol), 400, param="order")


@pytest.mark.parametrize("suffix", ["a", "x" * 64, "My_Bot-v1.2"])
def test_a_suffix_of_up_to_64_allowed_characters_is_kept(
    client: TestClient, alice: dict[str, str], chat_file: dict[str, Any], suffix: str
) -> None:
    body = {"model": "tiny-random-llama", "training_file": chat_file["id"], "suffix": suffix}
    response = client.post(JOBS, headers=alice, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["user_provided_suffix"] == suffix


@pytest.mark.parametrize("suffix", ["", "x" * 65, "has space", "a/b", "ünï", "a:b"])
def test_a_suffix_outside_the_rule_is_refused(
    client: TestClient, alice: dict[str, str], chat_file: dict[str, Any], suffix: str
) -> None:
    body = {"model": "tiny-random-llama", "training_file": chat_file["id"], "suffix": suffix}
    assert_error(client.post(JOBS, headers=alice, json=body), 400, param="suffix")
