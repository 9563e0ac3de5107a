"""Serving against hostile tenants (issue 12): one tenant's bad request, template or pins never fail or
block another tenant's requests, and hostile input is a 400 naming the field, never a 500."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from api_helpers import assert_error
from fastapi.testclient import TestClient
from serving_api_helpers import BERT, LLAMA, make_bert_adapter, make_llama_adapter, register_adapter
from sqlalchemy.orm import Session

from api.main import create_app
from api.services.serving import build_serving_engine
from lorasp_core.serving import decode as decode_module
from lorasp_service.settings import Settings

MESSAGES = [{"role": "user", "content": "hi"}]
POISON_TEMPERATURE = 0.7
# Three nested ranges of empty loops: about 10^12 iterations, i.e. no end without a budget.
SLOW_TEMPLATE = (
    "{% for i in range(10000) %}{% for j in range(10000) %}{% for k in range(10000) %}"
    "{% endfor %}{% endfor %}{% endfor %}{{ messages[0].content }}"
)


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hostile") / "good"
    make_llama_adapter(directory, 31)
    return directory


def with_template(source: Path, target: Path, template: str) -> Path:
    """A copy of the adapter whose lorasp.json carries `template` (as a tenant could upload it)."""
    shutil.copytree(source, target)
    meta = json.loads((target / "lorasp.json").read_text())
    (target / "lorasp.json").write_text(json.dumps({**meta, "chat_template": template}))
    return target


def chat(client: TestClient, headers: dict[str, str], model: str, **body: Any) -> Any:
    payload = {"model": model, "messages": MESSAGES, "max_tokens": 4, "temperature": 0, **body}
    return client.post("/v1/chat/completions", headers=headers, json=payload)


def tar_gz(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(directory.iterdir()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


def upload(client: TestClient, headers: dict[str, str], archive: bytes) -> Any:
    files = {"file": ("adapter.tar.gz", archive)}
    return client.post("/v1/adapters", headers=headers, files=files, data={"base_model": LLAMA})


def raw_post(client: TestClient, headers: dict[str, str], path: str, body: str) -> Any:
    """Post JSON text as is: how a lone surrogate escape ("\\ud800") reaches the server."""
    return client.post(path, headers={**headers, "Content-Type": "application/json"}, content=body)


# item 1: seeds, and a poisoned row among good ones -------------------------------------------------
@pytest.fixture(scope="module")
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as client:
        yield client


@pytest.mark.parametrize("seed", [2**64, 2**63, -(2**63) - 1])
def test_out_of_range_seed_is_a_400_naming_seed(client: TestClient, alice: dict[str, str], seed: int) -> None:
    assert_error(chat(client, alice, LLAMA, temperature=1, seed=seed), 400, param="seed")
    body = {"model": LLAMA, "prompt": "x", "max_tokens": 2, "temperature": 1, "seed": seed}
    assert_error(client.post("/v1/completions", headers=alice, json=body), 400, param="seed")


def test_extreme_valid_seeds_are_served(client: TestClient, alice: dict[str, str]) -> None:
    for seed in (2**63 - 1, -(2**63)):
        assert chat(client, alice, LLAMA, temperature=1, seed=seed).status_code == 200


def test_a_failing_row_fails_alone_in_a_shared_batch(
    api_settings: Settings, alice: dict[str, str], bob: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sample = decode_module.sample_token

    def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: Any) -> int:
        if temperature == POISON_TEMPERATURE:  # alice's request breaks inside the decode loop
            raise RuntimeError("poisoned row")
        return real_sample(logits, temperature, top_p, generator)

    monkeypatch.setattr(decode_module, "sample_token", sample)
    engine = build_serving_engine(api_settings)
    good = [chat_body(f"good {i}") for i in range(6)]
    app = create_app(api_settings, serving_engine=engine)
    with TestClient(app, raise_server_exceptions=False) as client:  # the poisoned request is a 500
        expected = [client.post("/v1/chat/completions", headers=bob, json=b).json() for b in good]
        batches_before = len(engine.batch_sizes)
        with ThreadPoolExecutor(max_workers=len(good) + 1) as pool:
            with engine.scheduler_paused():
                poisoned = pool.submit(
                    client.post,
                    "/v1/chat/completions",
                    headers=alice,
                    json={**chat_body("poison"), "temperature": POISON_TEMPERATURE},
                )
                futures = [
                    pool.submit(client.post, "/v1/chat/completions", headers=bob, json=b) for b in good
                ]
                deadline = time.monotonic() + 60  # a safety net against hanging, not a timing assertion
                while engine.pending_requests() < len(good) + 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
            responses = [f.result() for f in futures]
            assert_error(poisoned.result(), 500)
    engine.close()
    assert engine.batch_sizes[batches_before:] == [len(good) + 1]  # they really shared one batch
    assert [r.status_code for r in responses] == [200] * len(good)
    texts = [r.json()["choices"][0]["message"]["content"] for r in responses]
    assert texts == [e["choices"][0]["message"]["content"] for e in expected]


def chat_body(content: str) -> dict[str, Any]:
    return {
        "model": LLAMA,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 6,
        "temperature": 0,
    }


# item 8: text the tokenizer cannot take, empty classification input ------------------------------
@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/chat/completions",
            '{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800"}]}',
            "messages.0.content",
        ),
        (
            "/v1/chat/completions",
            '{"model": "%s", "messages": [{"role": "user", "content": "ok"}, '
            '{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
            "messages.1.content",
        ),
        ("/v1/completions", '{"model": "%s", "prompt": "a\\ud800"}', "prompt"),
        ("/v1/completions", '{"model": "%s", "prompt": "a", "stop": ["\\ud800"]}', "stop"),
    ],
)
def test_lone_surrogates_are_400s_naming_the_field(
    client: TestClient, alice: dict[str, str], path: str, body: str, param: str
) -> None:
    error = assert_error(raw_post(client, alice, path, body % LLAMA), 400, param=param)
    assert "surrogate" in error["message"]
    assert chat(client, alice, LLAMA).status_code == 200  # and the server goes on serving


@pytest.mark.parametrize("value", ["", [""], ["fine", ""], ["a\ud800"]])
def test_empty_or_broken_classification_input_is_a_400(
    client: TestClient, alice: dict[str, str], value: Any
) -> None:
    body = json.dumps({"model": BERT, "input": value})  # ensure_ascii keeps a surrogate as an escape
    assert_error(raw_post(client, alice, "/v1/classifications", body), 400, param="input")
    ok = client.post("/v1/classifications", headers=alice, json={"model": BERT, "input": ["fine"]})
    assert ok.status_code == 200, ok.text


# item 3: chat templates are untrusted code -------------------------------------------------------
BAD_TEMPLATES = {
    "raises": ("{{ raise_exception('no chat for you') }}", "no chat for you"),
    "unparsable": ("{% for m in messages %}{{ m.content }}", "does not parse"),
    "zero_division": ("{{ messages|length / 0 }}", "ZeroDivisionError"),
    "slow": (SLOW_TEMPLATE, "budget"),
    "huge": ("{% for i in range(10000) %}{{ 'x' * 100 }}{% endfor %}", "budget"),
}


def test_bad_chat_templates_are_rejected_at_upload(
    client: TestClient, alice: dict[str, str], good_dir: Path, tmp_path: Path
) -> None:
    for name, (template, fragment) in BAD_TEMPLATES.items():
        archive = tar_gz(with_template(good_dir, tmp_path / name, template))
        started = time.monotonic()
        error = assert_error(upload(client, alice, archive), 400, param="file", code="invalid_adapter")
        assert "lorasp.json" in error["message"] and "chat_template" in error["message"], name
        assert fragment in error["message"], (name, error["message"])
        assert time.monotonic() - started < 60  # the slow one was cut off (a hang guard, not a timing)
    fine = with_template(good_dir, tmp_path / "fine", "Q: {{ messages[-1].content }}\nA:")
    uploaded = upload(client, alice, tar_gz(fine))
    assert uploaded.status_code == 200, uploaded.text
    assert chat(client, alice, uploaded.json()["id"]).status_code == 200


@pytest.mark.parametrize("name", ["raises", "unparsable", "zero_division", "huge"])
def test_a_bad_template_that_got_past_upload_is_a_400_at_chat(
    client: TestClient,
    db: Session,
    api_settings: Settings,
    alice: dict[str, str],
    good_dir: Path,
    tmp_path: Path,
    name: str,
) -> None:
    directory = with_template(good_dir, tmp_path / name, BAD_TEMPLATES[name][0])
    model = register_adapter(db, api_settings, alice["X-Tenant-Id"], directory)
    error = assert_error(chat(client, alice, model), 400, param="model", code="invalid_chat_template")
    assert BAD_TEMPLATES[name][1] in error["message"]
    assert chat(client, alice, LLAMA).status_code == 200


def test_a_slow_template_does_not_hold_up_another_tenants_chat(
    api_settings: Settings,
    db: Session,
    alice: dict[str, str],
    bob: dict[str, str],
    good_dir: Path,
    tmp_path: Path,
) -> None:
    budget_ms = 2000.0
    settings = api_settings.model_copy(update={"chat_template_timeout_ms": budget_ms})
    model = register_adapter(
        db, settings, alice["X-Tenant-Id"], with_template(good_dir, tmp_path / "slow", SLOW_TEMPLATE)
    )
    finished: dict[str, float] = {}
    outcome: dict[str, Any] = {}
    with TestClient(create_app(settings)) as client:
        assert chat(client, bob, LLAMA).status_code == 200  # base model resident before the race

        def slow_chat() -> None:
            started = time.monotonic()
            outcome["slow"] = chat(client, alice, model)
            finished["slow"] = time.monotonic()
            outcome["slow_s"] = finished["slow"] - started

        thread = threading.Thread(target=slow_chat)
        thread.start()
        time.sleep(0.5)  # let alice's render get going (it runs for the whole budget)
        fast = chat(client, bob, LLAMA)
        finished["fast"] = time.monotonic()
        thread.join(timeout=120)
    assert fast.status_code == 200, fast.text
    error = assert_error(outcome["slow"], 400, param="model", code="invalid_chat_template")
    assert "budget" in error["message"]
    assert outcome["slow_s"] >= budget_ms / 1000  # it did run to its budget ...
    assert finished["fast"] < finished["slow"]  # ... and bob's chat did not wait behind it


# item 4: per-tenant adapter quotas ---------------------------------------------------------------
@pytest.fixture()
def quota_client(api_settings: Settings) -> Iterator[TestClient]:
    settings = api_settings.model_copy(
        update={
            "serving_max_adapters": 4,
            "serving_max_pinned_per_tenant": 2,
            "serving_max_resident_per_tenant": 3,
        }
    )
    with TestClient(create_app(settings)) as client:
        yield client


def load(client: TestClient, headers: dict[str, str], adapter_id: str, **body: Any) -> Any:
    return client.post(f"/v1/adapters/{adapter_id}/load", headers=headers, json=body or None)


def loaded_ids(client: TestClient, headers: dict[str, str]) -> list[str]:
    return [item["id"] for item in client.get("/v1/adapters/loaded", headers=headers).json()["data"]]


def test_one_tenant_cannot_take_every_adapter_slot(
    quota_client: TestClient,
    db: Session,
    api_settings: Settings,
    alice: dict[str, str],
    bob: dict[str, str],
    good_dir: Path,
) -> None:
    a1, a2, a3, a4 = (register_adapter(db, api_settings, alice["X-Tenant-Id"], good_dir) for _ in range(4))
    b1, b2 = (register_adapter(db, api_settings, bob["X-Tenant-Id"], good_dir) for _ in range(2))
    assert load(quota_client, alice, a1, pin=True).status_code == 200
    assert load(quota_client, alice, a2, pin=True).status_code == 200
    for pinned_too_many in (load(quota_client, alice, a3, pin=True), load(quota_client, alice, a4, pin=True)):
        error = assert_error(pinned_too_many, 429, param="adapter_id", code="adapter_quota_exceeded")
        assert "Your tenant's quota of 2 pinned adapters" in error["message"]
        assert bob["X-Tenant-Id"] not in error["message"] and alice["X-Tenant-Id"] not in error["message"]
    assert load(quota_client, alice, a3).status_code == 200
    # A resident adapter cannot be pinned past the quota either (the cache-hit path).
    assert_error(load(quota_client, alice, a3, pin=True), 429, code="adapter_quota_exceeded")
    # At her resident quota (3), alice's next load evicts her own least recently used adapter.
    assert load(quota_client, alice, a4).status_code == 200
    assert loaded_ids(quota_client, alice) == [a1, a2, a4]
    # Bob is served on his own adapters, and may pin his own quota's worth.
    for model in (b1, b2):
        assert chat(quota_client, bob, model).status_code == 200
        assert load(quota_client, bob, model, pin=True).json()["pinned"] is True
    assert set(loaded_ids(quota_client, bob)) == {b1, b2}
    assert set(loaded_ids(quota_client, alice)) <= {a1, a2, a4} and {a1, a2} <= set(
        loaded_ids(quota_client, alice)
    )
    # Unpinning gives alice her pin back.
    assert load(quota_client, alice, a1, pin=False).json()["pinned"] is False
    assert load(quota_client, alice, a4, pin=True).json()["pinned"] is True


def test_seq_cls_adapter_counts_against_its_owner_only(
    quota_client: TestClient,
    db: Session,
    api_settings: Settings,
    alice: dict[str, str],
    bob: dict[str, str],
    tmp_path: Path,
) -> None:
    make_bert_adapter(tmp_path / "bert", 3, ["no", "yes"])
    ids = [
        register_adapter(
            db,
            api_settings,
            tenant["X-Tenant-Id"],
            tmp_path / "bert",
            base_model=BERT,
            task="seq-cls",
            label_names=["no", "yes"],
        )
        for tenant in (alice, alice, alice, alice, bob)
    ]
    for model in ids[:4]:  # alice cycles through four adapters within her quota of three
        response = quota_client.post(
            "/v1/classifications", headers=alice, json={"model": model, "input": "x"}
        )
        assert response.status_code == 200, response.text
    assert len(loaded_ids(quota_client, alice)) == 3
    bob_says = quota_client.post("/v1/classifications", headers=bob, json={"model": ids[4], "input": "x"})
    assert bob_says.status_code == 200, bob_says.text
