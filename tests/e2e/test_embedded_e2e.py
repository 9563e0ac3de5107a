"""The embedded default (`lorasp serve` alone: SQLite, filesystem broker, its own worker process) survives a
killed worker: the filesystem broker cannot redeliver, so the restarted worker re-enqueues the orphaned job,
which resumes from its last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_stack import REPO_ROOT, chat_rows, events_of, free_port, jsonl, saved_checkpoint_steps, wait_until


class EmbeddedServer:
    def __init__(self, home: Path) -> None:
        self.home = home
        env = {key: value for key, value in os.environ.items() if not key.startswith("LORASP_")}
        self.env = dict(
            env,
            LORASP_HOME=str(home),
            LORASP_CHECKPOINT_EVERY_STEPS="10",
            OMP_NUM_THREADS="1",
            LORASP_HEARTBEAT_INTERVAL_SECONDS="0.5",
            PYTHONPATH=str(REPO_ROOT),
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def start(self) -> None:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}/v1"
        log = (self.home.parent / f"serve-{port}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lorasp_service.cli", "serve"],
            cwd=REPO_ROOT,
            env=dict(self.env, LORASP_PORT=str(port)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self._healthy, 90, "the embedded server")

    def _healthy(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "lorasp serve exited"
        try:
            return httpx.get(self.base_url.removesuffix("/v1") + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self) -> httpx.Client:
        key = (self.home / "default-api-key").read_text().strip()
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(60)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    embedded = EmbeddedServer(tmp_path / "home")
    try:
        yield embedded
    finally:
        embedded.stop()


def job_of(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return dict(client.get(f"/fine_tuning/jobs/{job_id}").json())


def test_embedded_job_resumes_after_its_worker_was_killed(server: EmbeddedServer) -> None:
    server.start()
    with server.client() as client:
        uploaded = client.post(
            "/files",
            data={"purpose": "fine-tune"},
            files={"file": ("t.jsonl", jsonl(chat_rows(32, words=60)))},
        ).json()
        job = client.post(
            "/fine_tuning/jobs",
            json={
                "model": "tiny-random-llama",
                "training_file": uploaded["id"],
                "seed": 0,
                "method": {
                    "type": "lorasp",
                    "lorasp": {"hyperparameters": {"n_epochs": 40, "batch_size": 4}},
                },
            },
        ).json()
        wait_until(lambda: saved_checkpoint_steps(client, job["id"]), 90, "a first checkpoint")
        running = job_of(client, job["id"])
        assert running["status"] == "running"

    # Kill the worker's whole process group (its main process and the pool process training the job).
    pool_pid = _worker_pid_of(server, job["id"])
    os.killpg(os.getpgid(pool_pid), signal.SIGKILL)
    assert server.process is not None
    server.process.wait(60)  # serve stops when its embedded worker dies
    server.start()  # same home: the new worker finds the orphaned job

    with server.client() as client:
        done = wait_until(
            lambda: (j := job_of(client, job["id"]))["status"] in ("succeeded", "failed") and j,
            150,
            "the resumed job",
        )
        assert done["status"] == "succeeded", done["error"]
        resumed = [
            event
            for event in events_of(client, job["id"])
            if (event.get("data") or {}).get("resumed_from_step")
        ]
        assert resumed and "resuming from checkpoint at step" in resumed[-1]["message"]


def _worker_pid_of(server: EmbeddedServer, job_id: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{server.home / 'lorasp.db'}")
    try:
        with engine.connect() as conn:
            worker_id = conn.execute(
                sa.text("SELECT worker_id FROM fine_tuning_jobs WHERE id = :id"), {"id": job_id}
            ).scalar_one()
    finally:
        engine.dispose()
    return int(str(worker_id).rsplit(":", 1)[1])
