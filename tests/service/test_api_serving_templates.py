"""Chat templates are tenant code (issue 12): checked at upload, a 400 at chat, and a slow one never
holds up another tenant's chat."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import assert_error
from fastapi.testclient import TestClient
from serving_api_helpers import LLAMA, make_llama_adapter, register_adapter
from sqlalchemy.orm import Session

from api.main import create_app
from lorasp_service.settings import Settings

MESSAGES = [{"role": "user", "content": "hi"}]
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


@pytest.fixture(scope="module")
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as client:
        yield client


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
    budget_ms = 4000.0
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
