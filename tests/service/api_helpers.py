"""Helpers for the API tests: dataset builders, uploads, error-envelope assertions."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from lorasp_service.settings import Settings

# Small enough for the size tests to exceed cheaply, large enough for every dataset the tests upload.
TEST_MAX_UPLOAD_BYTES = 64 * 1024


def jsonl(rows: list[Any]) -> bytes:
    return ("\n".join(json.dumps(row) for row in rows) + "\n").encode()


def chat_rows(n: int = 4) -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"{i}"}]}
        for i in range(n)
    ]


def preference_rows(n: int = 4) -> list[dict[str, Any]]:
    """OpenAI's preference (DPO) lines: the chosen answer is the right parity, the rejected one the other."""
    answers = ("even", "odd")
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"is {i} even or odd?"}]},
            "preferred_output": [{"role": "assistant", "content": answers[i % 2]}],
            "non_preferred_output": [{"role": "assistant", "content": answers[1 - i % 2]}],
        }
        for i in range(n)
    ]


def classification_rows(labels: tuple[str, ...] = ("neg", "pos"), n: int = 4) -> list[dict[str, str]]:
    return [{"text": f"text number {i}", "label": labels[i % len(labels)]} for i in range(n)]


def upload(
    client: TestClient,
    headers: dict[str, str],
    content: bytes,
    filename: str = "train.jsonl",
    purpose: str = "fine-tune",
) -> Any:
    return client.post(
        "/v1/files", headers=headers, files={"file": (filename, content)}, data={"purpose": purpose}
    )


def assert_error(response: Any, status: int, *, param: str | None = None, code: str | None = None) -> dict:
    """The response is OpenAI's error envelope with this status (and param / code when given)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


def storage_path(settings: Settings, *parts: str) -> Path:
    return Path(settings.blob_dir).joinpath(*parts)


def create_job(client: TestClient, headers: dict[str, str], training_file: str, **body: Any) -> Any:
    """POST a tiny-random-llama job (the usual arrangement step of a test)."""
    payload = {"model": "tiny-random-llama", "training_file": training_file, **body}
    return client.post("/v1/fine_tuning/jobs", headers=headers, json=payload)


# Lives here, not in conftest: a test module importing "conftest" gets whichever conftest pytest loaded
# first (tests/core's or tests/serving's when several folders run together).
class EnqueueRecorder:
    def __init__(self) -> None:
        self.job_ids: list[str] = []
        self.resource_classes: dict[str, str | None] = {}
        self.fail = False

    def __call__(self, job_id: str, resource_class: str | None = None, /) -> None:
        if self.fail:
            raise ConnectionError("broker down (test)")
        self.job_ids.append(job_id)
        self.resource_classes[job_id] = resource_class


def run_together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads released at the same instant (a race); results in call order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))
