"""What an open dashboard costs the API: `GET /v1/models` req/s and latency with and without N viewers
following a running job in headless chromium.

    python -m benchmarks.dashboard_load [--viewers 3] [--phase-seconds 30] [--rounds 1] [--concurrency 20]

It creates a fresh Postgres database (dropped at the end), starts a live `lorasp serve --no-worker` on
it (uvicorn as the CLI configures it, access log included), uploads a file and creates a job through the
API, then claims the job and writes its training as the worker would: `--steps-per-second` steps'
metrics events flushed once a second with the lease heartbeat (no real training, so the two cores go to
the API and the browser). Phases of `GET /v1/models` load (closed loop, `--concurrency` keep-alive
clients) alternate between no dashboard and `--viewers` real chromium tabs (Debian's package, via
Playwright), each signed in and on the job page, which loads the job's history and then follows its
SSE event stream, redrawing the curves. Each phase reports req/s, p50/p99, the server's CPU per
request, the browser's CPU, and what the pages fetched. Results: benchmarks/results/dashboard_load.json
and .md, with the machine described.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Browser, async_playwright
from sqlalchemy.engine import make_url

from benchmarks.api_load import DEFAULT_ADMIN_URL, LOOPBACK, Server, free_port, fresh_database
from benchmarks.common import machine_description
from benchmarks.dashboard_load_report import markdown
from benchmarks.dashboard_viewers import (
    WORKER_ID,
    RunningJob,
    chromium_path,
    open_viewer,
    phase_start,
    tree_cpu_seconds,
    viewer_report,
)
from benchmarks.load_client import run_load
from lorasp_service import jobs
from lorasp_service.auth import create_tenant_with_key
from lorasp_service.db import migrate, session_scope
from lorasp_service.settings import Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TRAINING_ROWS = b"".join(
    json.dumps(
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
    ).encode()
    + b"\n"
    for i in range(8)
)


@contextmanager
def lorasp_serve(env: dict[str, str], log_path: Path) -> Iterator[Server]:
    """`lorasp serve --no-worker` as a person starts it, until it answers."""
    port = free_port()
    command = [sys.executable, "-m", "lorasp_service.cli", "serve", "--no-worker"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env={**os.environ, **env, "LORASP_PORT": str(port)}, stdout=log, stderr=subprocess.STDOUT
        )
    base_url = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"lorasp serve exited with {process.returncode}: {log_path.read_text()}")
            try:
                if httpx.get(base_url + "/health", timeout=1.0, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("lorasp serve did not answer within 90 s")
            time.sleep(0.3)
        yield Server(base_url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def create_running_job(settings: Settings, server: Server, headers: dict[str, str]) -> tuple[str, int]:
    """A job created through the API, then claimed as a worker claims it (queued -> running)."""
    with httpx.Client(base_url=server.url + "/v1", headers=headers, trust_env=False, timeout=30) as client:
        files = {"file": ("train.jsonl", TRAINING_ROWS, "application/jsonl")}
        uploaded = client.post("/files", files=files, data={"purpose": "fine-tune"})
        uploaded.raise_for_status()
        created = client.post(
            "/fine_tuning/jobs", json={"model": "tiny-random-llama", "training_file": uploaded.json()["id"]}
        )
        created.raise_for_status()
    job_id = str(created.json()["id"])
    claim = jobs.claim_job(settings, job_id, WORKER_ID)
    if not claim.runs:
        raise RuntimeError(f"could not claim {job_id}: {claim.outcome}")
    jobs.record_message(settings, job_id, "Training started (benchmark)", data={"total_steps": 1_000_000})
    return job_id, claim.attempt


async def one_phase(
    args: argparse.Namespace,
    server: Server,
    headers: dict[str, str],
    job: RunningJob,
    browser: Browser | None,
    key: str,
) -> dict[str, Any]:
    viewers = args.viewers if browser is not None else 0
    pages = (
        [await open_viewer(browser, server.url, key, job.job_id) for _ in range(viewers)] if browser else []
    )
    await asyncio.sleep(args.settle_seconds)  # page loads done: the phase measures following, not loading
    starts = [await phase_start(page) for page in pages]
    own = {os.getpid(), server.pid}
    server_cpu, browser_cpu, step = server.cpu_seconds(), tree_cpu_seconds(os.getpid(), own), job.step
    client_cpu = time.process_time()

    async def send(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get("/v1/models", headers=headers)

    load = await run_load(
        server.url, send, requests=10_000_000, concurrency=args.concurrency, max_seconds=args.phase_seconds
    )
    server_used = server.cpu_seconds() - server_cpu
    browser_used = tree_cpu_seconds(os.getpid(), own) - browser_cpu
    client_used = time.process_time() - client_cpu
    reports = [await viewer_report(page, since) for page, since in zip(pages, starts, strict=True)]
    for page in pages:
        await page.close()
    print(
        f"viewers {viewers}: {load.requests_per_second:8.1f} req/s  p50 {load.p50_ms:6.1f} ms  "
        f"p99 {load.p99_ms:6.1f} ms  errors {load.errors}  server CPU {server_used:.1f} s",
        flush=True,
    )
    return {
        "viewers": viewers,
        **load.to_dict(),
        "server_cpu_seconds": round(server_used, 2),
        "server_cpu_ms_per_request": round(1000 * server_used / max(1, load.requests), 3),
        "browser_cpu_seconds": round(browser_used, 2),
        "load_client_cpu_seconds": round(client_used, 2),
        "steps_written": job.step - step,
        "last_step_written": job.step,
        "pages": [{"shown_step": r.shown_step, "requests": r.requests} for r in reports],
    }


async def all_phases(
    args: argparse.Namespace, server: Server, key: str, job: RunningJob
) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"}
    phases = []
    async with async_playwright() as playwright:
        # --no-sandbox: chromium's sandbox cannot start as root (CI); the pages are our own.
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=["--no-sandbox"]
        )
        await run_load(
            server.url,
            lambda c: c.get("/v1/models", headers=headers),
            requests=300,
            concurrency=args.concurrency,
            max_seconds=10,
        )  # warm-up
        for index in range(args.rounds):
            # Alternate which goes first so a drift in the machine's load favours neither.
            order: list[Browser | None] = [None, browser] if index % 2 == 0 else [browser, None]
            for viewer_browser in order:
                phases.append(await one_phase(args, server, headers, job, viewer_browser, key))
        await browser.close()
    return phases


def run(args: argparse.Namespace) -> dict[str, Any]:
    with fresh_database(args.admin_url) as database_url, tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), database_url=database_url)
        migrate(settings)
        with session_scope(settings) as session:
            _, key = create_tenant_with_key(session, "bench")
            session.commit()
        env = {"LORASP_HOME": home, "LORASP_DATABASE_URL": database_url, "OMP_NUM_THREADS": "1"}
        with lorasp_serve(env, Path(home) / "serve.log") as server:
            job_id, attempt = create_running_job(settings, server, {"Authorization": f"Bearer {key}"})
            job = RunningJob(settings, job_id, attempt, args.steps_per_second)
            job.write_steps(args.history_steps)  # a job well under way: the page loads a history first
            job.start()
            try:
                phases = asyncio.run(all_phases(args, server, key, job))
            finally:
                job.stop()
    return {
        "benchmark": "dashboard_load",
        "command": "python -m benchmarks.dashboard_load " + " ".join(sys.argv[1:]),
        "settings": {k: str(v) for k, v in vars(args).items() if k not in {"admin_url", "out_dir", "note"}},
        "machine": {**machine_description(), "load_average_at_end": list(os.getloadavg())},
        "note": args.note,
        "phases": phases,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL, help="a Postgres server URL (loopback)")
    parser.add_argument("--viewers", type=int, default=3, help="chromium tabs on the job page")
    parser.add_argument("--phase-seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=1, help="pairs of phases (without, with viewers)")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--steps-per-second", type=float, default=4.0, help="the running job's pace")
    parser.add_argument("--history-steps", type=int, default=300, help="steps written before the pages open")
    parser.add_argument("--settle-seconds", type=float, default=3.0)
    parser.add_argument("--note", default="", help="written into the results (e.g. the machine was shared)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if make_url(args.admin_url).host not in (None, "", LOOPBACK, "localhost", "::1"):
        parser.error("the benchmark only talks to loopback: --admin-url must point at 127.0.0.1")
    results = run(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "dashboard_load.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out_dir / "dashboard_load.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
