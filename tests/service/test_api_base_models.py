"""Base-model registry through /v1/admin/models: admin keys only, every validation failure a 400 naming
its problem, private models invisible to other tenants, removal refused while a job uses the model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from api_helpers import assert_error, chat_rows, create_job, jsonl, upload
from base_model_helpers import ADMIN, register, unique_name
from fastapi.testclient import TestClient
from model_dirs import bert_dir, llama_dir, qwen2_dir, truncate_weights
from sqlalchemy.orm import Session

from lorasp_core.models import CHATML_TEMPLATE
from lorasp_service.orm import Tenant
from lorasp_service.settings import Settings


def test_admin_routes_need_an_admin_key(client: TestClient, alice: dict[str, str], model_root: Path) -> None:
    assert_error(client.get(ADMIN), 401)
    assert_error(client.get(ADMIN, headers=alice), 403, code="permission_denied")
    assert_error(register(client, alice, model_root), 403, code="permission_denied")
    assert_error(client.delete(f"{ADMIN}/tiny-random-llama", headers=alice), 403, code="permission_denied")


@pytest.mark.parametrize("build", [llama_dir, qwen2_dir, bert_dir])
def test_registered_model_is_stored_by_hash_and_offered(
    client: TestClient,
    admin: dict[str, str],
    alice: dict[str, str],
    api_settings: Settings,
    model_root: Path,
    build: Callable[..., Path],
) -> None:
    source = build(model_root / unique_name(build.__name__))
    name = unique_name()
    response = register(client, admin, source, name=name)
    assert response.status_code == 201, response.text
    row = response.json()
    assert row["status"] == "ready" and row["bytes_done"] == row["bytes"] > 0
    assert row["source_kind"] == "directory" and row["owner_tenant_id"] is None
    stored = Path(api_settings.blob_dir) / "models" / row["sha256"]
    assert (stored / "config.json").is_file() and (stored / "model.safetensors").is_file()
    listed = {model["id"]: model for model in client.get("/v1/models", headers=alice).json()["data"]}
    assert listed[name]["lorasp"]["kind"] == "base"
    assert listed[name]["lorasp"]["task"] == ("seq-cls" if build is bert_dir else "causal-lm")
    assert name in {model["name"] for model in client.get(ADMIN, headers=admin).json()["data"]}


def _without(path: Path, *names: str) -> Path:
    for name in names:
        (path / name).unlink()
    return path


def _edit_config(path: Path, **changes: Any) -> Path:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))
    return path


INVALID: dict[str, tuple[Callable[[Path], Path], dict[str, Any], str, str]] = {
    "no config": (lambda p: _without(p, "config.json"), {}, "source", "invalid_config"),
    "unreadable config": (
        lambda p: (p / "config.json").write_text("{not json") and p,
        {},
        "source",
        "invalid_config",
    ),
    "task not inferable": (
        lambda p: _edit_config(p, architectures=["LlamaModel"]),
        {},
        "task",
        "unsupported_architecture",
    ),
    "no tokenizer": (
        lambda p: _without(p, "tokenizer.json", "tokenizer_config.json"),
        {},
        "source",
        "missing_tokenizer",
    ),
    "target modules": (lambda p: p, {"target_modules": ["nope"]}, "target_modules", "invalid_target_modules"),
    "truncated weights": (lambda p: truncate_weights(p) or p, {}, "source", "invalid_weights"),
    "shapes differ": (lambda p: _edit_config(p, intermediate_size=96), {}, "source", "invalid_weights"),
    "no weights": (lambda p: _without(p, "model.safetensors"), {}, "source", "invalid_weights"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_directory_is_a_400_naming_the_problem(
    client: TestClient, admin: dict[str, str], fresh_llama: Callable[..., Path], case: str
) -> None:
    breaks, body, param, code = INVALID[case]
    name = unique_name()
    error = assert_error(
        register(client, admin, breaks(fresh_llama()), name=name, **body), 400, param=param, code=code
    )
    assert "Traceback" not in error["message"]
    assert name not in {model["name"] for model in client.get(ADMIN, headers=admin).json()["data"]}


def test_chat_template_is_required_for_causal_lm_unless_given(
    client: TestClient, admin: dict[str, str], fresh_llama: Callable[..., Path]
) -> None:
    source = fresh_llama(chat_template=False)
    error = assert_error(
        register(client, admin, source), 400, param="chat_template", code="missing_chat_template"
    )
    assert "--chat-template" in error["message"]
    response = register(client, admin, source, chat_template=CHATML_TEMPLATE)
    assert response.status_code == 201, response.text
    assert response.json()["chat_template_override"] is True


def test_name_taken_and_hub_off_are_refused(
    client: TestClient, admin: dict[str, str], fresh_llama: Callable[..., Path]
) -> None:
    source = fresh_llama()
    assert_error(
        register(client, admin, source, name="tiny-random-llama"), 400, param="name", code="model_exists"
    )
    assert_error(
        register(client, admin, source, name="bad name!"), 400, param="name", code="invalid_model_name"
    )
    hub = assert_error(
        register(client, admin, "hf:org/repo@main"), 400, param="source", code="hub_downloads_disabled"
    )
    assert "LORASP_ALLOW_HUB_DOWNLOADS" in hub["message"]


def test_private_model_is_invisible_to_other_tenants_and_removal_waits_for_its_jobs(
    client: TestClient,
    admin: dict[str, str],
    alice: dict[str, str],
    bob: dict[str, str],
    db: Session,
    fresh_llama: Callable[..., Path],
    chat_file: dict[str, Any],
) -> None:
    tenant = db.get(Tenant, alice["X-Tenant-Id"])
    assert tenant is not None
    name = unique_name("private")
    response = register(client, admin, fresh_llama(), name=name, tenant=tenant.name)
    assert response.status_code == 201, response.text
    assert response.json()["owner_tenant_id"] == tenant.id
    assert name in {m["id"] for m in client.get("/v1/models", headers=alice).json()["data"]}
    assert name not in {m["id"] for m in client.get("/v1/models", headers=bob).json()["data"]}
    assert_error(client.get(f"/v1/models/{name}", headers=bob), 404, code="model_not_found")
    bob_file = upload(client, bob, jsonl(chat_rows())).json()["id"]
    assert_error(
        create_job(client, bob, bob_file, model=name), 400, param="model", code="model_not_available"
    )
    job = create_job(client, alice, chat_file["id"], model=name)
    assert job.status_code == 200, job.text
    busy = assert_error(client.delete(f"{ADMIN}/{name}", headers=admin), 409, code="model_in_use")
    assert job.json()["id"] in busy["message"]
    assert_error(client.delete(f"{ADMIN}/tiny-random-llama", headers=admin), 400, code="model_not_removable")
    assert_error(client.delete(f"{ADMIN}/{unique_name()}", headers=admin), 404, code="model_not_found")


def test_remove_deletes_the_row_and_the_stored_files(
    client: TestClient,
    admin: dict[str, str],
    alice: dict[str, str],
    api_settings: Settings,
    fresh_llama: Callable[..., Path],
) -> None:
    source = fresh_llama(seed=7)
    name = unique_name()
    row = register(client, admin, source, name=name).json()
    stored = Path(api_settings.blob_dir) / "models" / row["sha256"]
    assert stored.is_dir()
    assert client.delete(f"{ADMIN}/{name}", headers=admin).json() == {
        "name": name,
        "object": "base_model",
        "deleted": True,
    }
    assert not stored.exists()
    assert name not in {m["id"] for m in client.get("/v1/models", headers=alice).json()["data"]}
    shutil.rmtree(source)


def test_cli_adds_lists_and_removes(
    api_settings: Settings, fresh_llama: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from lorasp_service import admin_models_cli
    from lorasp_service.cli import build_parser

    def run(*argv: str) -> int:
        return admin_models_cli.run(api_settings, build_parser().parse_args(["admin", "models", *argv]))

    name = unique_name("cli")
    assert run("add", name, "--from", str(fresh_llama()), "--max-length", "256") == 0
    assert f"registered {name!r}: causal-lm" in capsys.readouterr().out
    assert run("list") == 0
    assert any(line.startswith(name) and "ready" in line for line in capsys.readouterr().out.splitlines())
    assert run("add", unique_name(), "--from", "hf:org/repo") == 2
    assert "LORASP_ALLOW_HUB_DOWNLOADS" in capsys.readouterr().err
    assert run("add", unique_name(), "--from", str(fresh_llama()), "--max-length", "100000") == 2
    assert "(--max-length)" in capsys.readouterr().err
    assert run("remove", name) == 0
    assert run("remove", name) == 2
    assert "no base model named" in capsys.readouterr().err
