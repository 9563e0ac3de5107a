"""Fixtures of the end-to-end tests: see e2e_stack.py for what the stack is."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from dashboard_pages import ensure_worker
from e2e_stack import (
    REPO_ROOT,
    Stack,
    chat_rows,
    free_port,
    insert_queued_job,
    run_cli,
    wait_for_end,
    wait_until,
)
from playwright.sync_api import Browser, sync_playwright
from sqlalchemy.engine import make_url

from lorasp_service.db import session_scope
from lorasp_service.orm import Job
from lorasp_service.settings import Settings


@pytest.fixture(scope="session")
def stack(
    postgres_admin_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    session_tag = "e2e_" + secrets.token_hex(4)
    admin_url = make_url(postgres_admin_url).set(database="postgres")
    database_url = make_url(postgres_admin_url).set(database=f"lorasp_{session_tag}")
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{database_url.database}"'))
    root = tmp_path_factory.mktemp("e2e")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("LORASP_")}
    env.update(
        {
            "LORASP_HOME": str(root / "home"),
            "LORASP_DATABASE_URL": database_url.render_as_string(hide_password=False),
            "LORASP_BROKER_URL": redis_url,
            "LORASP_BROKER_KEY_PREFIX": f"lorasp-{session_tag}:",
            "LORASP_QUEUE_NAME": f"lorasp-{session_tag}",
            "LORASP_MODEL_CACHE_DIR": str(root / "models"),
            "LORASP_PORT": str(port),
            "LORASP_CHECKPOINT_EVERY_STEPS": "10",
            "LORASP_HEARTBEAT_INTERVAL_SECONDS": "0.5",
            "LORASP_HEARTBEAT_STALE_SECONDS": "5",
            # The webhook e2e's receiver listens on 127.0.0.1.
            "LORASP_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    logs = root / "logs"
    logs.mkdir()
    run_cli(env, "migrate")
    api_key = run_cli(env, "admin", "create-key", "--tenant", "e2e").strip().splitlines()[-1]
    settings = Settings(
        **{key[len("LORASP_") :].lower(): value for key, value in env.items() if key.startswith("LORASP_")}
    )
    engine = sa.create_engine(database_url)
    serve_log = logs / "serve.log"
    with serve_log.open("wb") as log:
        command = [sys.executable, "-m", "lorasp_service.cli", "serve"]
        server = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base_url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.poll() is None, serve_log.read_text()
        try:
            return httpx.get(base_url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    stack = Stack(env=env, settings=settings, base_url=base_url, api_key=api_key, logs=logs, engine=engine)
    try:
        wait_until(healthy, 90, "the API to answer /health")
        yield stack
    finally:
        stack.kill_workers()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database_url.database}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def worker(stack: Stack) -> Path:
    """One live worker process (started on first use, restarted if a test killed it)."""
    live = stack.live_workers()
    if live:
        return stack.worker_logs[stack.workers.index(live[-1])]
    return stack.start_worker()


@pytest.fixture
def settings(stack: Stack) -> Settings:
    return stack.settings


@pytest.fixture
def job_id(stack: Stack, settings: Settings) -> Iterator[str]:
    """A queued job row of a tenant of its own, written directly (no message is sent for it).

    No worker runs meanwhile: its stale-job sweep would take over a lease the test plays dead. The job
    ends cancelled, so no later worker tries to train it (it has no file in storage).
    """
    stack.ensure_workers(0)
    tag = secrets.token_hex(6)
    insert_queued_job(settings, tag, f"lease-{tag}")
    yield f"ftjob-{tag}"
    with session_scope(settings) as session:
        session.execute(sa.update(Job).where(Job.id == f"ftjob-{tag}").values(status="cancelled"))
        session.commit()


# Module scope, not session: Playwright's sync API keeps an asyncio loop running in the main thread while
# it is open, and tests after the /ui modules (asyncio.run in tests/service) must not find one.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless chromium driven by Playwright (nothing downloaded), for the /ui tests."""
    executable = shutil.which("chromium")
    assert executable, "the chromium package is not installed (.ci/run installs it)"
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium's sandbox cannot start.
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def finished_job(stack: Stack) -> dict[str, Any]:
    """A succeeded job with a validation file: 8 rows, batch 2, 3 epochs = 12 steps."""
    ensure_worker(stack)
    with stack.client() as client:
        training = stack.upload(client, chat_rows(8, words=4))
        validation = stack.upload(client, chat_rows(4, words=4), name="valid.jsonl")
        body = {
            "model": "tiny-random-llama",
            "training_file": training,
            "validation_file": validation,
            "seed": 0,
            "method": {
                "type": "lorasp",
                "lorasp": {"hyperparameters": {"n_epochs": 3, "batch_size": 2, "eval_every": 3}},
            },
        }
        created = client.post("/fine_tuning/jobs", json=body)
        assert created.status_code == 200, created.text
        job = wait_for_end(client, created.json()["id"], 240)
        assert job["status"] == "succeeded", job
        return job
