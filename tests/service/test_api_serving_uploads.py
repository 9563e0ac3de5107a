"""POST /v1/adapters: upload a PEFT adapter archive, use it like a trained one; hostile archives are 400s."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import assert_error
from fastapi.testclient import TestClient
from serving_api_helpers import BERT, LLAMA, greedy_text, make_llama_adapter, prompt_ids
from sqlalchemy.orm import Session
from torch import nn

from api.main import create_app
from lorasp_service.orm import Adapter
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

UNPACKED_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    directory = tmp_path_factory.mktemp("upload") / "adapter"
    return directory, make_llama_adapter(directory, 23)


@pytest.fixture(scope="module")
def upload_client(api_settings: Settings) -> Iterator[TestClient]:
    settings = api_settings.model_copy(update={"max_adapter_unpacked_bytes": UNPACKED_LIMIT})
    with TestClient(create_app(settings)) as client:
        yield client


def tar_gz(members: dict[str, bytes], prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def files_of(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def upload(
    client: TestClient, headers: dict[str, str], content: bytes, filename: str = "a.tar.gz", **form: str
) -> Any:
    data = {"base_model": LLAMA, **form}
    return client.post("/v1/adapters", headers=headers, files={"file": (filename, content)}, data=data)


def test_upload_tar_gz_then_chat_download_and_delete(
    upload_client: TestClient,
    alice: dict[str, str],
    bob: dict[str, str],
    adapter: tuple[Path, nn.Module],
    db: Session,
    api_settings: Settings,
) -> None:
    directory, model = adapter
    response = upload(upload_client, alice, tar_gz(files_of(directory)), suffix="mine")
    assert response.status_code == 200, response.text
    created = response.json()
    model_id = created["id"]
    assert model_id.startswith(f"ft:{LLAMA}:mine:") and created["owned_by"] == alice["X-Tenant-Id"]
    assert created["lorasp"]["kind"] == "adapter" and created["lorasp"]["rank"] == 4
    assert created["lorasp"]["task"] == "causal-lm" and created["lorasp"]["freeze_ratio"] == 0.5
    row = db.get(Adapter, model_id)
    assert row is not None and row.source == "upload" and row.job_id is None

    ids = [m["id"] for m in upload_client.get("/v1/models", headers=alice).json()["data"]]
    assert model_id in ids
    payload = {"model": model_id, "prompt": "uploaded", "max_tokens": 8, "temperature": 0}
    completion = upload_client.post("/v1/completions", headers=alice, json=payload)
    assert completion.status_code == 200, completion.text
    expected = greedy_text(model, prompt_ids("uploaded"), 8)
    assert expected and completion.json()["choices"][0]["text"] == expected
    assert_error(upload_client.post("/v1/completions", headers=bob, json=payload), 404)

    download = upload_client.get(f"/v1/adapters/{model_id}/download", headers=alice)
    assert download.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(download.content)) as archive:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(archive.getnames())
    assert upload_client.delete(f"/v1/models/{model_id}", headers=alice).status_code == 200
    assert not BlobStorage(api_settings.blob_dir).path(row.storage_key).exists()
    assert_error(upload_client.post("/v1/completions", headers=alice, json=payload), 404)


def test_upload_zip_with_a_top_level_folder(
    upload_client: TestClient, alice: dict[str, str], adapter: tuple[Path, nn.Module]
) -> None:
    directory, _ = adapter
    members = {f"my-adapter/{name}": data for name, data in files_of(directory).items()}
    response = upload(upload_client, alice, zip_bytes(members), filename="a.zip")
    assert response.status_code == 200, response.text
    chat = {"model": response.json()["id"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    assert upload_client.post("/v1/chat/completions", headers=alice, json=chat).status_code == 200


def _symlink_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("extra.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    return buffer.getvalue()


def _symlink_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        info = zipfile.ZipInfo("extra.json")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("traversal_tar", "'..'"),
        ("traversal_zip", "'..'"),
        ("absolute_tar", "absolute"),
        ("symlink_tar", "link"),
        ("symlink_zip", "link"),
        ("bomb_zip", "limit"),
        ("missing_weights", "adapter_model.safetensors"),
        ("not_an_archive", "neither"),
    ],
)
def test_hostile_or_broken_archives_are_400s(
    upload_client: TestClient,
    alice: dict[str, str],
    adapter: tuple[Path, nn.Module],
    api_settings: Settings,
    kind: str,
    fragment: str,
) -> None:
    files = files_of(adapter[0])
    content = {
        "traversal_tar": lambda: tar_gz({**files, "../../escaped.txt": b"x"}),
        "traversal_zip": lambda: zip_bytes({**files, "sub/../../escaped.txt": b"x"}),
        "absolute_tar": lambda: tar_gz({**files, "/tmp/escaped.txt": b"x"}),
        "symlink_tar": lambda: _symlink_tar(files),
        "symlink_zip": lambda: _symlink_zip(files),
        "bomb_zip": lambda: zip_bytes({**files, "zeros.bin": b"\0" * (4 * UNPACKED_LIMIT)}),
        "missing_weights": lambda: tar_gz({"adapter_config.json": files["adapter_config.json"]}),
        "not_an_archive": lambda: b"plain text, not an archive",
    }[kind]()
    error = assert_error(upload(upload_client, alice, content), 400, param="file", code="invalid_archive")
    assert fragment in error["message"]
    tmp = BlobStorage(api_settings.blob_dir).root / ".tmp"
    assert not any(path.name.startswith("adapter-upload-") for path in tmp.iterdir())
    assert not (BlobStorage(api_settings.blob_dir).root.parent / "escaped.txt").exists()


def test_upload_validated_against_the_base_model(
    upload_client: TestClient, alice: dict[str, str], adapter: tuple[Path, nn.Module]
) -> None:
    archive = tar_gz(files_of(adapter[0]))
    error = assert_error(upload(upload_client, alice, archive, base_model=BERT), 400, code="invalid_adapter")
    assert "tiny-random-llama" in error["message"]
    assert_error(upload(upload_client, alice, archive, base_model="no-such-model"), 400, param="base_model")
    assert_error(upload(upload_client, alice, archive, suffix="bad suffix!"), 400, param="suffix")
    garbage = {**files_of(adapter[0]), "adapter_model.safetensors": b"garbage" * 20}
    error = assert_error(upload(upload_client, alice, tar_gz(garbage)), 400, code="invalid_adapter")
    assert "safetensors" in error["message"]
    missing_field = upload_client.post("/v1/adapters", headers=alice, files={"file": ("a.tar.gz", archive)})
    assert_error(missing_field, 400, param="base_model")
