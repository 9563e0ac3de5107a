"""`make demo`: fine-tune SmolLM2-135M-Instruct on a small sentiment chat set and chat with the result.

Starts `lorasp serve` (embedded default: SQLite + filesystem broker + one worker) on a free port with
home `var/` (or $LORASP_HOME), and then only talks HTTP to it, like any client: upload the training and
validation files, create a LoRA-SP job, follow its metrics events (training and validation loss), list
its checkpoint models, and ask the fine-tuned model and the base model about reviews of the validation
file (not trained on). The server is stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from lorasp_service.jobs import TERMINAL_STATUSES, JobStatus

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAINING_FILE = REPO_ROOT / "examples" / "sentiment-chat.jsonl"
UNSEEN_FILE = REPO_ROOT / "examples" / "sentiment-chat-val.jsonl"  # no overlap with the training file
BASE_MODEL = "smollm2-135m-instruct"
# 60 examples: 2 epochs of batch 8 = 16 steps, a few seconds each on 2 CPU cores.
HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "rank": 8, "freeze_ratio": 0.5}
UNSEEN_REVIEWS = 4
SERVER_START_TIMEOUT_SECONDS = 180.0
JOB_TIMEOUT_SECONDS = 900.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(home: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "demo-server.log"
    env = dict(os.environ, LORASP_HOME=str(home), LORASP_PORT=str(port), LORASP_HOST="127.0.0.1")
    # One intra-op thread unless told otherwise: on 2 busy cores, 2 torch threads were 4x slower than 1.
    env.setdefault("OMP_NUM_THREADS", "1")
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lorasp_service.cli", "serve"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, log_path


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for_health(base_url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"no answer from /health within {SERVER_START_TIMEOUT_SECONDS:.0f} s; see {log_path}")


def check(response: httpx.Response) -> dict[str, Any]:
    if response.is_error:
        request = response.request
        raise SystemExit(f"{request.method} {request.url} -> {response.status_code}: {response.text}")
    return dict(response.json())


def follow_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Poll the job; a tqdm bar follows the newest metrics event (step/total, loss, tokens/s)."""
    bar: tqdm[Any] | None = None
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    seen_messages: set[str] = set()
    try:
        while time.monotonic() < deadline:
            job = check(client.get(f"/v1/fine_tuning/jobs/{job_id}"))
            events = check(client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 20}))["data"]
            for event in reversed(events):  # oldest first
                if event["type"] != "metrics" and event["id"] not in seen_messages:
                    seen_messages.add(event["id"])
                    tqdm.write(f"  [{event['level']}] {event['message']}")
            metrics = next((e["data"] for e in events if e["type"] == "metrics" and e.get("data")), None)
            if metrics:
                if bar is None:
                    bar = tqdm(
                        total=metrics["total_steps"], initial=metrics["step"], desc="fine-tuning", unit="step"
                    )
                bar.n = metrics["step"]
                loss, speed = metrics["train_loss"], metrics["tokens_per_second"]
                valid = next(
                    (
                        e["data"]["valid_loss"]
                        for e in events
                        if e["type"] == "metrics" and "valid_loss" in (e.get("data") or {})
                    ),
                    None,
                )
                postfix = {"loss": f"{loss:.3f}", "tokens_s": f"{speed:.0f}"}
                if valid is not None:
                    postfix["valid_loss"] = f"{valid:.3f}"
                bar.set_postfix(postfix)
                bar.refresh()
            if job["status"] in TERMINAL_STATUSES:
                return job
            time.sleep(1.0)
    finally:
        if bar is not None:
            bar.close()
    raise SystemExit(f"job {job_id} did not finish within {JOB_TIMEOUT_SECONDS:.0f} s")


def show_checkpoints(client: httpx.Client, job: dict[str, Any]) -> None:
    """The job's checkpoint models with their validation loss (pick one from before overfitting), and
    where its per-step metrics are."""
    listed = check(client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints"))["data"]
    for checkpoint in listed:
        metrics = checkpoint["metrics"]
        print(
            f"  {checkpoint['fine_tuned_model_checkpoint']}: train loss {metrics['train_loss']:.3f}, "
            f"full validation loss {metrics.get('full_valid_loss', float('nan')):.3f}"
        )
    for file_id in job["result_files"]:
        rows = client.get(f"/v1/files/{file_id}/content").text.count("\n") - 1
        print(f"  per-step metrics: {file_id} (step_metrics.csv, {rows} steps)")
    print()


def unseen_reviews() -> list[tuple[list[dict[str, str]], str]]:
    """(prompt messages without the answer, expected answer) for reviews that are not in training."""
    rows = [json.loads(line) for line in UNSEEN_FILE.read_text().splitlines() if line.strip()]
    picked = [row for row in rows if row["messages"][-1]["content"] == "positive"][: UNSEEN_REVIEWS // 2]
    picked += [row for row in rows if row["messages"][-1]["content"] == "negative"][: UNSEEN_REVIEWS // 2]
    return [(row["messages"][:-1], row["messages"][-1]["content"]) for row in picked]


def ask(client: httpx.Client, model: str, messages: list[dict[str, str]]) -> str:
    body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0}
    answer = check(client.post("/v1/chat/completions", json=body, timeout=120))
    return str(answer["choices"][0]["message"]["content"]).strip()


def run_demo(client: httpx.Client) -> None:
    with TRAINING_FILE.open("rb") as handle:
        uploaded = check(
            client.post(
                "/v1/files",
                data={"purpose": "fine-tune"},
                files={"file": (TRAINING_FILE.name, handle, "application/jsonl")},
            )
        )
    with UNSEEN_FILE.open("rb") as handle:
        validation = check(
            client.post(
                "/v1/files",
                data={"purpose": "fine-tune"},
                files={"file": (UNSEEN_FILE.name, handle, "application/jsonl")},
            )
        )
    print(f"uploaded {TRAINING_FILE.name} as {uploaded['id']}, {UNSEEN_FILE.name} as {validation['id']}")
    job = check(
        client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": BASE_MODEL,
                "training_file": uploaded["id"],
                "validation_file": validation["id"],
                "suffix": "sentiment",
                "seed": 0,
                "method": {"type": "lorasp", "lorasp": {"hyperparameters": HYPERPARAMETERS}},
            },
        )
    )
    print(f"created job {job['id']} on {BASE_MODEL}: {json.dumps(HYPERPARAMETERS)}")
    job = follow_job(client, job["id"])
    if job["status"] != JobStatus.SUCCEEDED:
        raise SystemExit(f"job {job['id']} ended {job['status']}: {job.get('error')}")
    model = job["fine_tuned_model"]
    print(f"fine-tuned model: {model} ({job['trained_tokens']} trained tokens)")
    show_checkpoints(client, job)
    agree_tuned = agree_base = 0
    reviews = unseen_reviews()
    for messages, expected in reviews:
        tuned, base = ask(client, model, messages), ask(client, BASE_MODEL, messages)
        agree_tuned += tuned.lower().startswith(expected)
        agree_base += base.lower().startswith(expected)
        print(f"review: {messages[-1]['content']!r} (expected: {expected})")
        print(f"  fine-tuned: {tuned!r}\n  base model: {base!r}")
    total = len(reviews)
    print(f"\nanswered as expected: fine-tuned {agree_tuned}/{total}, base model {agree_base}/{total}")


def main() -> int:
    started = time.monotonic()
    home = Path(os.environ.get("LORASP_HOME", REPO_ROOT / "var")).resolve()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    process, log_path = start_server(home, port)
    print(f"started lorasp serve on {base_url} (home {home}, log {log_path})")
    try:
        wait_for_health(base_url, process, log_path)
        key = (home / "default-api-key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
            run_demo(client)
    finally:
        stop_server(process)
    print(f"demo finished in {time.monotonic() - started:.0f} s (server stopped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
