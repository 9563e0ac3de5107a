"""A SIGKILLed `lorasp serve` leaves blobs without rows; the restarted API sweeps them after the grace period
and keeps every blob that a row refers to."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from e2e_stack import REPO_ROOT, chat_rows, free_port, jsonl, wait_until

GRACE_SECONDS = 2


def _start(home: Path, grace: float, log_name: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("LORASP_")}
    env.update(
        LORASP_HOME=str(home),
        LORASP_PORT=str(port),
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO_ROOT),
        LORASP_ORPHAN_GRACE_SECONDS=str(grace),
        LORASP_ORPHAN_SWEEP_INTERVAL_SECONDS="0.5",
    )
    with (home.parent / log_name).open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lorasp_service.cli", "serve", "--no-worker"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, (home.parent / log_name).read_text()
        try:
            return httpx.get(base_url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 90, "lorasp serve to answer /health")
    return process, base_url + "/v1"


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


def _blobs(storage: Path) -> set[str]:
    return {path.relative_to(storage).as_posix() for path in storage.rglob("*") if path.is_file()}


def _plant(storage: Path, key: str) -> Path:
    path = storage / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"left by a dead process")
    return path


def test_orphans_of_a_killed_api_are_swept_after_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    storage = home / "storage"
    server, base_url = _start(home, 3600, "serve-1.log")
    try:
        key = (home / "default-api-key").read_text().strip()
        client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        kept = jsonl(chat_rows(3))
        kept_id = client.post(
            "/files", data={"purpose": "fine-tune"}, files={"file": ("kept.jsonl", kept)}
        ).json()["id"]
        with_rows = _blobs(storage)
        assert any(kept_id in blob for blob in with_rows)
        # Other kinds a dead worker leaves: an adapter copy and a checkpoint of a job with no row.
        planted = [
            _plant(storage, key)
            for key in (
                "adapters/ftjob-dead/adapter_model.safetensors",
                "adapters/ftjob-dead.tar.gz",
                "jobs/ftjob-dead/checkpoints/step-10/trainer_state.pt",
            )
        ]

        # A large upload (its validation takes a while): SIGKILL the API as soon as its blob is on disk.
        big = jsonl(chat_rows(40_000)) * 8
        upload = threading.Thread(target=lambda: _post_ignoring_errors(base_url, key, big), daemon=True)
        upload.start()
        wait_until(
            lambda: _blobs(storage) - with_rows - {str(p.relative_to(storage)) for p in planted},
            60,
            "the upload to reach storage",
            interval=0.005,
        )
        _kill(server)
        upload.join(30)
    finally:
        _kill(server)
    left = _blobs(storage) - with_rows
    stray = {blob for blob in left if blob.startswith((".tmp/", "files/"))}
    assert stray, f"the killed upload left nothing to sweep: {sorted(left)}"

    server, base_url = _start(home, GRACE_SECONDS, "serve-2.log")
    try:
        wait_until(lambda: _blobs(storage) == with_rows, 60, f"the sweep of {sorted(left)}")
        assert not (storage / "jobs" / "ftjob-dead").exists()
        client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        time.sleep(2 * GRACE_SECONDS)  # several more sweeps: what has a row still stays
        assert _blobs(storage) == with_rows
        content = client.get(f"/files/{kept_id}/content")
        assert content.status_code == 200 and content.content == kept
    finally:
        _kill(server)


def _post_ignoring_errors(base_url: str, key: str, body: bytes) -> None:
    # the server is killed mid-request: that is the point, so its connection error is expected
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(
            f"{base_url}/files",
            headers={"Authorization": f"Bearer {key}"},
            data={"purpose": "fine-tune"},
            files={"file": ("big.jsonl", body)},
            timeout=120,
        )
