"""What a registered row promises when jobs and serving load it: a `gguf:FILE` is dequantised once into
the model store (and loads as the model it was written from), the registered max_length caps a job's,
the registered dtype is what the weights load in (bf16 training works on CPU), and a store copy whose
bytes changed fails the job rather than loading."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from api_helpers import assert_error, create_job
from base_model_helpers import register, unique_name
from fastapi.testclient import TestClient
from gguf_files import write_llama_gguf
from sqlalchemy.orm import Session
from transformers import LlamaConfig, LlamaForCausalLM

from lorasp_core.models import make_tiny_tokenizer
from lorasp_service import jobs, model_store
from lorasp_service.db import session_scope
from lorasp_service.model_loading import load_model
from lorasp_service.model_store import StoredModelCorruptError
from lorasp_service.orm import BaseModelRecord, Job
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage
from lorasp_service.training import run_claimed_job

WORKER = "test-host:base-models"


def _row(db: Session, name: str) -> BaseModelRecord:
    db.expire_all()
    row = db.get(BaseModelRecord, name)
    assert row is not None
    return row


def _run(client: TestClient, headers: dict[str, str], settings: Settings, file_id: str, **body: Any) -> Job:
    """Create the job through the API, run it in-process as a worker would; the finished job row."""
    created = create_job(client, headers, file_id, **body)
    assert created.status_code == 200, created.text
    job_id = str(created.json()["id"])
    claim = jobs.claim_job(settings, job_id, WORKER)
    assert claim.runs, claim
    run_claimed_job(settings, job_id, WORKER, claim)
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LlamaForCausalLM]:
    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(5)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=int(tokenizer.pad_token_id),
    )
    model = LlamaForCausalLM(config).eval()
    path = write_llama_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf")
    return path, model


def test_gguf_file_is_dequantised_once_into_the_store_and_loads_as_written(
    client: TestClient,
    admin: dict[str, str],
    api_settings: Settings,
    db: Session,
    tiny_gguf: tuple[Path, LlamaForCausalLM],
) -> None:
    path, original = tiny_gguf
    name = unique_name("gguf")
    response = register(client, admin, f"gguf:{path}", name=name)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (
        body["source_kind"] == "gguf"
        and body["status"] == "ready"
        and body["architecture"] == "LlamaForCausalLM"
    )
    stored = Path(api_settings.blob_dir) / "models" / body["sha256"]
    assert (stored / "model.safetensors").is_file() and not list(stored.glob("*.gguf"))
    assert "quantization_config" not in json.loads((stored / "config.json").read_text())
    assert not list((Path(api_settings.blob_dir) / ".tmp").glob("gguf-*"))  # staging folder removed

    loaded = load_model(api_settings, BlobStorage(api_settings.blob_dir), _row(db, name))
    assert loaded.name == name and loaded.task == "causal-lm"
    messages = [{"role": "user", "content": "hi there"}]
    tokenizer = make_tiny_tokenizer()
    prompt = str(tokenizer.apply_chat_template(messages, tokenize=False))
    assert str(loaded.tokenizer.apply_chat_template(messages, tokenize=False)) == prompt
    ids = tokenizer(prompt)["input_ids"]
    assert loaded.tokenizer(prompt)["input_ids"] == ids
    inputs = torch.tensor([list(ids)])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(inputs).logits, original(inputs).logits, atol=1e-5, rtol=0)


def test_unreadable_gguf_is_a_400_naming_the_source(
    client: TestClient, admin: dict[str, str], tmp_path: Path
) -> None:
    missing = assert_error(
        register(client, admin, f"gguf:{tmp_path / 'absent.gguf'}"), 400, param="source", code="invalid_gguf"
    )
    assert "no GGUF file" in missing["message"]
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    junk = assert_error(
        register(client, admin, f"gguf:{tmp_path / 'junk.gguf'}"), 400, param="source", code="invalid_gguf"
    )
    assert "junk.gguf" in junk["message"] and "Traceback" not in junk["message"]


def test_registered_max_length_caps_the_jobs(
    client: TestClient,
    admin: dict[str, str],
    alice: dict[str, str],
    chat_file: dict[str, Any],
    fresh_llama: Callable[..., Path],
) -> None:
    name = unique_name("short")
    assert register(client, admin, fresh_llama(), name=name, max_length=48).status_code == 201
    param = "method.lorasp.hyperparameters.max_length"
    method = {"type": "lorasp", "lorasp": {"hyperparameters": {"max_length": 64}}}
    error = assert_error(
        create_job(client, alice, chat_file["id"], model=name, method=method), 400, param=param
    )
    assert "48" in error["message"] and name in error["message"]
    job = create_job(client, alice, chat_file["id"], model=name)
    assert job.status_code == 200, job.text
    assert job.json()["method"]["supervised"]["hyperparameters"]["max_length"] == 48  # the default, capped


def test_registered_dtype_is_what_jobs_train_and_serving_loads_in(
    client: TestClient,
    admin: dict[str, str],
    alice: dict[str, str],
    api_settings: Settings,
    db: Session,
    chat_file: dict[str, Any],
    fresh_llama: Callable[..., Path],
) -> None:
    name = unique_name("bf16")
    assert register(client, admin, fresh_llama(), name=name, dtype="bfloat16").status_code == 201
    loaded = load_model(api_settings, BlobStorage(api_settings.blob_dir), _row(db, name))
    assert {parameter.dtype for parameter in loaded.model.parameters()} == {torch.bfloat16}
    job = _run(client, alice, api_settings, chat_file["id"], model=name)
    assert job.status == "succeeded", job.error


def test_a_store_copy_with_other_bytes_fails_the_job(
    client: TestClient,
    admin: dict[str, str],
    alice: dict[str, str],
    api_settings: Settings,
    db: Session,
    chat_file: dict[str, Any],
    fresh_llama: Callable[..., Path],
) -> None:
    name = unique_name("tampered")
    sha256 = register(client, admin, fresh_llama(seed=11), name=name).json()["sha256"]
    weights = Path(api_settings.blob_dir) / "models" / sha256 / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed: only the hash can tell
    weights.write_bytes(bytes(data))
    with pytest.raises(StoredModelCorruptError, match="does not match its registration"):
        load_model(api_settings, BlobStorage(api_settings.blob_dir), _row(db, name))
    job = _run(client, alice, api_settings, chat_file["id"], model=name)
    assert job.status == "failed" and job.error is not None
    assert job.error["code"] == "model_unavailable" and sha256 in job.error["message"]
    assert model_store.content_sha256(weights.parent) != sha256
