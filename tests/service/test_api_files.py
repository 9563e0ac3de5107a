"""/v1/files: upload (stream, checksum, validation, size limits), list, read, content, delete."""

from __future__ import annotations

import hashlib
from typing import Any

from api_helpers import TEST_MAX_UPLOAD_BYTES, assert_error, chat_rows, classification_rows, jsonl, upload
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.deps import get_enqueue
from api.main import create_app
from lorasp_service.orm import File
from lorasp_service.settings import Settings


def _stored_blobs(settings: Settings, tenant_id: str) -> list[str]:
    folder = settings.blob_dir / "files" / tenant_id
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_upload_returns_openai_file_object_with_checksum_and_stats(
    client: TestClient, alice: dict[str, str], db: Session
) -> None:
    content = jsonl(chat_rows(5))
    response = upload(client, alice, content, filename="chat.jsonl")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("file-")
    assert body["object"] == "file"
    assert body["bytes"] == len(content)
    assert body["filename"] == "chat.jsonl"
    assert body["purpose"] == "fine-tune"
    assert body["status"] == "processed"
    assert isinstance(body["created_at"], int)
    assert body["lorasp"] == {"format": "chat", "examples": 5, "label_counts": {}}
    row = db.get(File, body["id"])
    assert row is not None and row.sha256 == hashlib.sha256(content).hexdigest()
    assert body["sha256"] == row.sha256


def test_classification_upload_counts_labels(client: TestClient, alice: dict[str, str]) -> None:
    response = upload(client, alice, jsonl(classification_rows(("a", "b", "c"), n=7)))
    assert response.status_code == 200, response.text
    assert response.json()["lorasp"] == {
        "format": "classification",
        "examples": 7,
        "label_counts": {"a": 3, "b": 2, "c": 2},
    }


def test_csv_upload_is_read_as_csv(client: TestClient, alice: dict[str, str]) -> None:
    response = upload(client, alice, b"text,label\ngood film,1\nbad film,0\n", filename="sst.csv")
    assert response.status_code == 200, response.text
    assert response.json()["lorasp"]["format"] == "classification"


def test_invalid_dataset_is_rejected_with_line_numbers_and_nothing_kept(
    client: TestClient, alice: dict[str, str], api_settings: Settings, db: Session
) -> None:
    rows = jsonl(chat_rows(2)) + b"{not json\n" + jsonl([{"messages": "nope"}])
    blobs_before = _stored_blobs(api_settings, alice["X-Tenant-Id"])
    files_before = db.scalar(select(func.count()).select_from(File))
    error = assert_error(upload(client, alice, rows), 400, param="file", code="invalid_file_format")
    assert "line 3" in error["message"] and "line 4" in error["message"]
    assert "line 1" not in error["message"]
    assert _stored_blobs(api_settings, alice["X-Tenant-Id"]) == blobs_before
    assert db.scalar(select(func.count()).select_from(File)) == files_before


def test_empty_and_non_utf8_uploads_are_400(client: TestClient, alice: dict[str, str]) -> None:
    assert_error(upload(client, alice, b""), 400, param="file")
    error = assert_error(upload(client, alice, b'{"text": "\xff\xfe", "label": "x"}\n'), 400, param="file")
    assert "line 1" in error["message"]


def test_purpose_other_than_fine_tune_is_400_naming_purpose(
    client: TestClient, alice: dict[str, str]
) -> None:
    error = assert_error(
        upload(client, alice, jsonl(chat_rows()), purpose="classification"), 400, param="purpose"
    )
    assert "fine-tune" in error["message"]


def test_missing_multipart_fields_are_400_naming_them(client: TestClient, alice: dict[str, str]) -> None:
    response = client.post("/v1/files", headers=alice, data={"purpose": "fine-tune"})
    assert_error(response, 400, param="file")
    response = client.post("/v1/files", headers=alice, files={"file": ("a.jsonl", jsonl(chat_rows()))})
    assert_error(response, 400, param="purpose")
    response = client.post("/v1/files", headers=alice, content=b"not multipart")
    assert_error(response, 400)


def test_upload_over_the_limit_is_413_while_streaming(
    client: TestClient, alice: dict[str, str], api_settings: Settings
) -> None:
    # Within the Content-Length slack, so it is the streaming check that stops it.
    content = jsonl(classification_rows(n=4)) + b" " * (TEST_MAX_UPLOAD_BYTES + 1)
    blobs_before = _stored_blobs(api_settings, alice["X-Tenant-Id"])
    error = assert_error(upload(client, alice, content), 413, param="file", code="file_too_large")
    assert error["message"].startswith("File 'train.jsonl' is larger than")
    assert _stored_blobs(api_settings, alice["X-Tenant-Id"]) == blobs_before
    assert list((api_settings.blob_dir / ".tmp").iterdir()) == []


def test_upload_with_huge_content_length_is_413_before_reading(
    client: TestClient, alice: dict[str, str]
) -> None:
    content = b"x" * (TEST_MAX_UPLOAD_BYTES * 3)
    error = assert_error(upload(client, alice, content), 413, code="file_too_large")
    assert error["message"].startswith("Request body of")  # the Content-Length guard, not the stream


def test_get_list_content_and_delete(
    client: TestClient, alice: dict[str, str], api_settings: Settings
) -> None:
    content = jsonl(chat_rows(3))
    file_id = upload(client, alice, content, filename="mine.jsonl").json()["id"]

    got = client.get(f"/v1/files/{file_id}", headers=alice)
    assert got.status_code == 200 and got.json()["id"] == file_id

    listed = client.get("/v1/files", headers=alice).json()
    assert listed["object"] == "list" and file_id in [item["id"] for item in listed["data"]]
    assert client.get("/v1/files?purpose=batch", headers=alice).json()["data"] == []

    body = client.get(f"/v1/files/{file_id}/content", headers=alice)
    assert body.status_code == 200 and body.content == content
    assert "mine.jsonl" in body.headers["content-disposition"]

    deleted = client.delete(f"/v1/files/{file_id}", headers=alice)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": file_id, "object": "file", "deleted": True}
    assert_error(client.get(f"/v1/files/{file_id}", headers=alice), 404)
    assert_error(client.get(f"/v1/files/{file_id}/content", headers=alice), 404)
    assert_error(client.delete(f"/v1/files/{file_id}", headers=alice), 404)
    assert file_id not in [item["id"] for item in client.get("/v1/files", headers=alice).json()["data"]]
    assert not any(name.startswith(file_id) for name in _stored_blobs(api_settings, alice["X-Tenant-Id"]))


def test_files_list_pages_newest_first(client: TestClient, make_tenant: Any) -> None:
    carol = make_tenant()
    ids = [upload(client, carol, jsonl(chat_rows(1 + i))).json()["id"] for i in range(3)]
    first = client.get("/v1/files?limit=2", headers=carol).json()
    assert [item["id"] for item in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    second = client.get(f"/v1/files?limit=2&after={first['last_id']}", headers=carol).json()
    assert [item["id"] for item in second["data"]] == [ids[0]] and second["has_more"] is False


def test_unknown_file_is_404(client: TestClient, alice: dict[str, str]) -> None:
    assert_error(client.get("/v1/files/file-doesnotexist", headers=alice), 404, code="not_found")


def test_file_used_by_an_active_job_cannot_be_deleted(
    client: TestClient, alice: dict[str, str], chat_file: dict[str, Any]
) -> None:
    job = client.post(
        "/v1/fine_tuning/jobs",
        headers=alice,
        json={"model": "tiny-random-llama", "training_file": chat_file["id"]},
    )
    assert job.status_code == 200, job.text
    assert_error(client.delete(f"/v1/files/{chat_file['id']}", headers=alice), 409, code="file_in_use")
    client.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel", headers=alice)
    assert client.delete(f"/v1/files/{chat_file['id']}", headers=alice).status_code == 200


def test_a_line_over_the_limit_is_refused_naming_it_and_nothing_is_kept(
    api_settings: Settings, alice: dict[str, str]
) -> None:
    settings = api_settings.model_copy(update={"max_line_bytes": 1024})
    app = create_app(settings)
    app.dependency_overrides[get_enqueue] = lambda: lambda job_id: None
    fits = jsonl([{"prompt": "p" * 900, "completion": "c"}])
    over = jsonl(chat_rows(2)) + jsonl([{"prompt": "p" * 2000, "completion": "c"}]) + jsonl(chat_rows(2))
    with TestClient(app) as limited:
        before = _stored_blobs(settings, alice["X-Tenant-Id"])
        error = assert_error(upload(limited, alice, over), 400, param="file", code="invalid_file_format")
        assert "line 3" in error["message"] and "1024 bytes" in error["message"], error
        assert _stored_blobs(settings, alice["X-Tenant-Id"]) == before
        assert not list((settings.blob_dir / ".tmp").iterdir())
        assert upload(limited, alice, fits).status_code == 200


def test_the_default_line_limit_follows_the_token_limit() -> None:
    assert Settings(max_example_tokens=100_000).max_line_bytes_limit == 3_200_000
    assert Settings(max_example_tokens=16).max_line_bytes_limit == 1024 * 1024  # the floor
    assert Settings(max_line_bytes=77).max_line_bytes_limit == 77


def test_a_lone_surrogate_in_a_training_file_is_refused_at_upload(
    client: TestClient, alice: dict[str, str]
) -> None:
    bad = b'{"messages": [{"role": "user", "content": "a\\ud800"}, {"role": "assistant", "content": "b"}]}\n'
    error = assert_error(upload(client, alice, jsonl(chat_rows(2)) + bad), 400, param="file")
    assert "line 3" in error["message"] and "lone surrogate" in error["message"], error
    assert "messages[0].content" in error["message"]


def test_405_allow_lists_every_method_of_the_path(client: TestClient, alice: dict[str, str]) -> None:
    response = client.post("/v1/files/file-anything", headers=alice)
    assert_error(response, 405, code="method_not_allowed")
    assert {method.strip() for method in response.headers["allow"].split(",")} == {"GET", "DELETE"}
    only_get = client.put("/v1/files/file-anything/content", headers=alice)
    assert_error(only_get, 405)
    assert only_get.headers["allow"] == "GET"
