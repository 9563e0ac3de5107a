"""The client CLI (`lorasp files|jobs|chat|adapters|models`) as a person runs it, against the live stack:
upload, create, follow to the model id, chat, download; a failing or cancelled job makes `follow` exit
non-zero with its reason; API errors are a message, not a traceback."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from e2e_stack import REPO_ROOT, Stack, chat_rows, jsonl

from lorasp_client.connection import Connection
from lorasp_client.events import poll_events, stream_events

pytestmark = pytest.mark.services


def client_env(stack: Stack) -> dict[str, str]:
    # Only what a user sets: the server's URL and key (not the server's LORASP_* settings).
    env = {key: value for key, value in stack.env.items() if not key.startswith(("LORASP_", "OPENAI_"))}
    return dict(env, LORASP_API_BASE=stack.base_url + "/v1", LORASP_API_KEY=stack.api_key)


def lorasp(stack: Stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lorasp_service.cli", *args],
        cwd=REPO_ROOT,
        env=client_env(stack),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def upload(stack: Stack, path: Path, rows: list[dict]) -> str:
    path.write_bytes(jsonl(rows))
    return ok(lorasp(stack, "files", "upload", str(path))).strip()


def test_cli_trains_follows_chats_and_downloads(stack: Stack, worker: Path, tmp_path: Path) -> None:
    file_id = upload(stack, tmp_path / "train.jsonl", chat_rows(8, words=4))
    assert file_id.startswith("file-")
    assert file_id in ok(lorasp(stack, "files", "list"))
    job_id = ok(
        lorasp(
            stack,
            "jobs",
            "create",
            "--model",
            "tiny-random-llama",
            "--file",
            file_id,
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--rank",
            "4",
            "--suffix",
            "cli",
            "--seed",
            "1",
        )
    )
    job_id = job_id.strip()
    assert job_id.startswith("ftjob-")

    followed = lorasp(stack, "jobs", "follow", job_id)
    assert followed.returncode == 0, followed.stderr
    model = followed.stdout.strip().splitlines()[-1]
    job = json.loads(ok(lorasp(stack, "jobs", "get", job_id, "--json")))
    assert job["status"] == "succeeded" and model == job["fine_tuned_model"]
    assert model.startswith("ft:tiny-random-llama:cli:")
    assert job["method"]["lorasp"]["hyperparameters"]["rank"] == 4  # --rank reached the API
    assert "4/4" in followed.stderr and "loss=" in followed.stderr  # the bar: 2 epochs x 2 steps
    assert "successfully completed" in followed.stderr
    assert "polling instead" not in followed.stderr  # the bar was fed by the event stream

    events = [json.loads(line) for line in ok(lorasp(stack, "jobs", "events", job_id, "--json")).splitlines()]
    assert events[0]["message"].startswith("Created fine-tuning job")
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"] == [1, 2, 3, 4]
    with Connection(stack.base_url + "/v1", stack.api_key).http() as http:  # the fallback: same events
        assert [e["id"] for e in poll_events(http, job_id)] == [e["id"] for e in events]
        assert [e["id"] for e in stream_events(http, job_id, after=events[2]["id"])] == [
            e["id"] for e in events[3:]
        ]
    assert job_id in ok(lorasp(stack, "jobs", "list"))
    assert model in ok(lorasp(stack, "models", "list"))

    chatted = lorasp(stack, "chat", model, "--message", "great great", "--max-tokens", "4")
    assert chatted.returncode == 0 and chatted.stdout.endswith("\n"), chatted.stderr

    target = tmp_path / "adapter.tar.gz"
    saved = json.loads(ok(lorasp(stack, "adapters", "download", model, "-o", str(target), "--json")))
    assert saved["path"] == str(target)
    assert saved["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    with tarfile.open(target, "r:gz") as archive:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(archive.getnames())


def test_follow_of_a_failing_job_exits_nonzero_with_its_error(
    stack: Stack, worker: Path, tmp_path: Path
) -> None:
    rows = chat_rows(8, words=4)
    rows[2]["messages"][0]["content"] = "x" * (stack.settings.max_example_tokens + 100)  # too long
    file_id = upload(stack, tmp_path / "long.jsonl", rows)
    done = lorasp(
        stack,
        "jobs",
        "create",
        "--model",
        "tiny-random-llama",
        "--file",
        file_id,
        "--epochs",
        "1",
        "--follow",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed:" in done.stderr and "line 3" in done.stderr
    assert "Traceback" not in done.stderr and "ft:" not in done.stdout


def test_cancelled_job_makes_follow_fail_and_api_errors_are_messages(
    stack: Stack, worker: Path, tmp_path: Path
) -> None:
    file_id = upload(stack, tmp_path / "train.jsonl", chat_rows(16, words=4))
    job_id = ok(
        lorasp(
            stack,
            "jobs",
            "create",
            "--model",
            "tiny-random-llama",
            "--file",
            file_id,
            "--epochs",
            "50",
            "--batch-size",
            "1",
        )
    ).strip()
    assert job_id in ok(lorasp(stack, "jobs", "cancel", job_id))
    done = lorasp(stack, "jobs", "follow", job_id)
    assert done.returncode == 1 and "cancelled" in done.stderr, done.stdout + done.stderr

    unknown = lorasp(stack, "jobs", "get", "ftjob-nope")
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert "ftjob-nope" in unknown.stderr and "(param: fine_tuning_job_id)" in unknown.stderr
    refused = lorasp(stack, "jobs", "resume", job_id)
    assert refused.returncode == 1 and "cannot be resumed" in refused.stderr
    unauthorized = subprocess.run(
        [sys.executable, "-m", "lorasp_service.cli", "files", "list", "--api-key", "sk-lorasp-wrong"],
        cwd=REPO_ROOT,
        env=client_env(stack),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unauthorized.returncode == 1 and "Incorrect API key" in unauthorized.stderr
