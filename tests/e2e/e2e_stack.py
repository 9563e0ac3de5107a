"""Helpers of the end-to-end stack: a fresh PostgreSQL database, a Redis queue of its own, `lorasp serve`
and real `lorasp worker` processes, all configured through LORASP_* environment variables like a deployment.

Nothing here runs a task in-process: jobs go API -> Redis -> worker process -> database.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import sqlalchemy as sa
from openai.types.fine_tuning import FineTuningJob

from lorasp_service.db import session_scope
from lorasp_service.orm import File, Job, Tenant
from lorasp_service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chat_rows(count: int, *, words: int = 6) -> list[dict[str, Any]]:
    """A tiny sentiment chat dataset (byte-level tiny model: short texts keep steps cheap)."""
    rows = []
    for index in range(count):
        label = "positive" if index % 2 else "negative"
        text = " ".join(["great" if index % 2 else "awful"] * words) + f" #{index}"
        messages = [{"role": "user", "content": text}, {"role": "assistant", "content": label}]
        rows.append({"messages": messages})
    return rows


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(row) for row in rows).encode() + b"\n"


@dataclass
class Stack:
    env: dict[str, str]
    settings: Settings
    base_url: str
    api_key: str
    logs: Path
    engine: sa.Engine
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    worker_logs: list[Path] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url + "/v1", headers=self.headers, timeout=30)

    def start_worker(self, **extra_env: str) -> Path:
        log_path = self.logs / f"worker-{len(self.worker_logs)}.log"
        env = dict(self.env, **extra_env)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "lorasp_service.cli", "worker"],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.workers.append(process)
        self.worker_logs.append(log_path)
        wait_until(lambda: "ready." in log_path.read_text(errors="replace"), 90, f"worker ready ({log_path})")
        return log_path

    def live_workers(self) -> list[subprocess.Popen[bytes]]:
        return [process for process in self.workers if process.poll() is None]

    def ensure_workers(self, count: int) -> None:
        """Exactly `count` live workers: start more, or stop (SIGTERM) the newest extra ones."""
        while len(self.live_workers()) < count:
            self.start_worker()
        for process in self.live_workers()[count:]:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(60)

    def worker_holding(self, job_id: str) -> subprocess.Popen[bytes] | None:
        """The live `lorasp worker` whose pool process holds the job's lease (worker_id is host:pid)."""
        worker_id = self.job_row(job_id)["worker_id"] or ""
        pid_text = worker_id.rpartition(":")[2]
        if not pid_text.isdigit():
            return None
        try:  # the lease holder is a pool process: its parent is the worker we started
            fields = Path(f"/proc/{pid_text}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        parent = int(fields[1])
        return next((process for process in self.live_workers() if process.pid == parent), None)

    def sigkill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL a worker's whole process group (main and pool processes), as a crash would."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)

    def kill_workers(self, sig: signal.Signals = signal.SIGTERM) -> None:
        for process in self.live_workers():
            os.killpg(process.pid, sig)
        for process in self.workers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def upload(self, client: httpx.Client, rows: list[dict[str, Any]], name: str = "train.jsonl") -> str:
        response = client.post("/files", data={"purpose": "fine-tune"}, files={"file": (name, jsonl(rows))})
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def create_job(self, client: httpx.Client, file_id: str, **hyperparameters: Any) -> dict[str, Any]:
        body = {
            "model": "tiny-random-llama",
            "training_file": file_id,
            "seed": 0,
            "method": {"type": "lorasp", "lorasp": {"hyperparameters": hyperparameters}},
        }
        response = client.post("/fine_tuning/jobs", json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def job_row(self, job_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT * FROM fine_tuning_jobs WHERE id = :id"), {"id": job_id})
            return dict(row.mappings().one())

    def resume_checkpoints(self, job_id: str) -> list[int]:
        """Steps of the job's internal resume checkpoints (the API lists only its checkpoint models)."""
        with self.engine.connect() as conn:
            query = sa.text("SELECT step FROM fine_tuning_checkpoints WHERE job_id = :id ORDER BY step")
            return [int(step) for step in conn.execute(query, {"id": job_id}).scalars()]

    def checkpoint_dirs(self, job_id: str) -> list[str]:
        """The checkpoint folders the job has in storage."""
        folder = self.settings.blob_dir / "jobs" / job_id / "checkpoints"
        return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []

    def count(self, table: str, job_id: str) -> int:
        with self.engine.connect() as conn:
            query = sa.text(f"SELECT count(*) FROM {table} WHERE job_id = :id")  # noqa: S608 - fixed names
            return int(conn.execute(query, {"id": job_id}).scalar_one())


def events_of(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """All events of the job, newest first (paging with `after` like OpenAI's list)."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        response = client.get(f"/fine_tuning/jobs/{job_id}/events", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        events += page["data"]
        if not page["has_more"]:
            return events
        params["after"] = page["data"][-1]["id"]


def saved_checkpoint_steps(client: httpx.Client, job_id: str) -> list[int]:
    """Steps at which the job saved a resume checkpoint, from its events (kept or pruned since)."""
    return sorted(
        {
            event["data"]["step"]
            for event in events_of(client, job_id)
            if event["message"].startswith("Checkpoint created at step")
        }
    )


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_end(client: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    """The job once it is succeeded, failed or cancelled."""

    def current() -> dict[str, Any] | None:
        job = client.get(f"/fine_tuning/jobs/{job_id}").json()
        return job if job["status"] in TERMINAL else None

    return dict(wait_until(current, timeout, f"job {job_id} to finish"))


def run_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "lorasp_service.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def insert_queued_job(settings: Settings, tag: str, tenant_name: str) -> str:
    """A queued job row (and its tenant and file rows) written directly: no message is sent for it, and
    its file has no blob in storage. Returns the job id, `ftjob-<tag>`."""
    with session_scope(settings) as session:
        session.add(Tenant(id=f"tenant-{tag}", name=tenant_name))
        session.flush()  # no ORM relationships order these inserts
        session.add(
            File(
                id=f"file-{tag}",
                tenant_id=f"tenant-{tag}",
                filename="t.jsonl",
                purpose="fine-tune",
                bytes=1,
                sha256="0" * 64,
                storage_key=f"files/{tag}",
            )
        )
        session.flush()
        session.add(
            Job(
                id=f"ftjob-{tag}",
                tenant_id=f"tenant-{tag}",
                model="tiny-random-llama",
                training_file_id=f"file-{tag}",
                status="queued",
            )
        )
        session.commit()
    return f"ftjob-{tag}"


def openai_client(stack: Stack) -> openai.OpenAI:
    """The official client on the stack's API, failing fast (no retries)."""
    return openai.OpenAI(api_key=stack.api_key, base_url=stack.base_url + "/v1", max_retries=0, timeout=60)


def poll_until_finished(client: openai.OpenAI, job: FineTuningJob, timeout: float = 240) -> FineTuningJob:
    """Poll `job` through the client until it ends."""
    deadline = time.monotonic() + timeout
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job.id} still {job.status}"
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    return job
