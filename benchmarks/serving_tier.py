"""Inference-tier benchmark: the API in front of one, then two `lorasp inference` processes.

    python -m benchmarks.serving_tier --out benchmarks/results/serving_tier    # smollm2-135m-instruct
    python -m benchmarks.serving_tier --quick --out /tmp/serving_tier_quick    # tiny-random-llama smoke

One tenant, 8 LoRA-SP adapters (benchmarks.serving.make_adapters) uploaded through POST /v1/adapters as
in the inference-tier e2e test, an embedded SQLite database and storage in a temporary LORASP_HOME (no
Postgres or Redis: `lorasp serve --no-worker` never touches the broker). For each tier size the API
routes by rendezvous hashing of (base model, adapter id) over LORASP_INFERENCE_URLS; the machine's
cores are split evenly among the inference processes through OMP_NUM_THREADS (torch's intra-op pool
size), so two processes on 2 cores get one thread each and one process gets two. After one untimed
request per adapter (hot-loads it), N chat completions go through the `openai` client with C in flight
over 127.0.0.1, bounded by --requests and --max-seconds. Reported per tier size: requests/s, p50/p99
latency, failures, and requests per process (each adapter's rendezvous first choice, checked against
the processes' hot lists). Results: <out>.json and <out>.md with the machine described.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai

from api.inference_tier.rendezvous import rendezvous_order, routing_key
from benchmarks.api_load import free_port
from benchmarks.common import machine_description
from benchmarks.serving import PROMPTS, make_adapters, percentile
from lorasp_service.auth import create_tenant_with_key
from lorasp_service.db import migrate, session_scope
from lorasp_service.process_group import spawn_logged, stop_group
from lorasp_service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
ADAPTER_COUNT = 8
CLI = [sys.executable, "-m", "lorasp_service.cli"]


def adapter_archive(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(directory, arcname="adapter")
    return buffer.getvalue()


def wait_for(
    urls: list[str], headers: dict[str, str], processes: dict[Path, subprocess.Popen[bytes]], timeout: float
) -> None:
    """Until every url answers /health with 200; a process that exits meanwhile stops the benchmark."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{log.name} exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if all(healthy(url, headers) for url in urls):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{urls} did not answer /health within {timeout:.0f} s")


def healthy(url: str, headers: dict[str, str]) -> bool:
    return httpx.get(url + "/health", headers=headers, timeout=2, trust_env=False).status_code == 200


def one_request(
    client: openai.OpenAI, adapter: str, index: int, max_tokens: int, deadline: float = float("inf")
) -> float | None:
    """Latency in seconds of one chat completion, or None if it failed (any error of the client) or
    the deadline (time.monotonic) had passed before it started."""
    if time.monotonic() > deadline:
        return None
    started = time.perf_counter()
    try:
        client.chat.completions.create(
            model=adapter,
            messages=[{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
            max_tokens=max_tokens,
            temperature=0,
        )
    except openai.OpenAIError:
        return None
    return time.perf_counter() - started


def measure_tier(
    process_count: int,
    env: dict[str, str],
    adapters: list[Path],
    state: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Start `process_count` inference processes and the API, upload the adapters (first tier only),
    warm them, send the load and stop everything."""
    threads = max(1, (os.cpu_count() or 1) // process_count)
    tier_env = dict(env, OMP_NUM_THREADS=str(threads))
    ports = [free_port() for _ in range(process_count)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    logs = Path(env["LORASP_HOME"]) / "logs"
    processes: dict[Path, subprocess.Popen[bytes]] = {}
    try:
        for index, port in enumerate(ports):
            command = CLI + ["inference", "--port", str(port), "--name", f"inference-{index}"]
            log = logs / f"tier{process_count}-inference-{index}.log"
            processes[log] = spawn_logged(command, tier_env, log, REPO_ROOT)
        api_port = free_port()
        api_env = dict(env, LORASP_PORT=str(api_port), LORASP_INFERENCE_URLS=json.dumps(urls))
        api_log = logs / f"tier{process_count}-serve.log"
        processes[api_log] = spawn_logged(CLI + ["serve", "--no-worker"], api_env, api_log, REPO_ROOT)
        api_url = f"http://127.0.0.1:{api_port}"
        secret_headers = {"Authorization": f"Bearer {env['LORASP_INFERENCE_SECRET']}"}
        wait_for([api_url, *urls], secret_headers, processes, args.start_timeout)
        headers = {"Authorization": f"Bearer {state['key']}"}
        if not state["adapter_ids"]:
            with httpx.Client(base_url=api_url + "/v1", headers=headers, timeout=300, trust_env=False) as api:
                for index, directory in enumerate(adapters):
                    files = {"file": ("adapter.tar.gz", adapter_archive(directory))}
                    data = {"base_model": args.model, "suffix": f"b{index}"}
                    response = api.post("/adapters", data=data, files=files)
                    response.raise_for_status()
                    state["adapter_ids"].append(str(response.json()["id"]))
        ids: list[str] = state["adapter_ids"]
        client = openai.OpenAI(
            api_key=state["key"],
            base_url=api_url + "/v1",
            max_retries=0,
            timeout=args.max_seconds,
        )
        for index, adapter in enumerate(ids):  # untimed: hot-loads every adapter on its process
            if one_request(client, adapter, index, args.max_tokens) is None:
                raise RuntimeError(f"warm-up request for {adapter} failed (see {logs})")
        plan = [ids[index % len(ids)] for index in range(args.requests)]
        deadline = time.monotonic() + args.max_seconds
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            # A request not started by the deadline counts as failed: the phase is bounded in time.
            futures = [
                pool.submit(one_request, client, adapter, index, args.max_tokens, deadline)
                for index, adapter in enumerate(plan)
            ]
            latencies = [future.result() for future in futures]
        wall = time.perf_counter() - started
        first_choice = {
            adapter: rendezvous_order(routing_key(args.model, adapter), urls)[0] for adapter in ids
        }
        hot = {
            url: {
                entry["adapter_id"]
                for entry in httpx.get(
                    url + "/health", headers=secret_headers, timeout=10, trust_env=False
                ).json()["hot"]
            }
            for url in urls
        }
        affinity_held = all(
            {url for url in urls if adapter in hot[url]} == {first_choice[adapter]} for adapter in ids
        )
        served = Counter(
            first_choice[adapter] for adapter, latency in zip(plan, latencies, strict=True) if latency
        )
        done = [latency for latency in latencies if latency is not None]
    finally:
        for process in processes.values():
            stop_group(process)
    return {
        "processes": process_count,
        "torch_threads_per_process": threads,
        "requests": len(plan),
        "failed": len(plan) - len(done),
        "seconds": round(wall, 3),
        "requests_per_second": round(len(done) / wall, 3),
        "p50_ms": round(percentile(done, 0.5) * 1000, 1) if done else None,
        "p99_ms": round(percentile(done, 0.99) * 1000, 1) if done else None,
        "served_per_process": {f"inference-{urls.index(url)}": served.get(url, 0) for url in urls},
        "adapters_per_process": {f"inference-{i}": sorted(hot[url]) for i, url in enumerate(urls)},
        "affinity_held": affinity_held,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lorasp-tierbench-") as home:
        (Path(home) / "logs").mkdir()
        settings = Settings(home=Path(home))  # the embedded default: SQLite under home
        migrate(settings)
        with session_scope(settings) as session:
            _, key = create_tenant_with_key(session, "bench")
            session.commit()
        env = {name: value for name, value in os.environ.items() if not name.startswith("LORASP_")}
        env.update(
            LORASP_HOME=home,
            LORASP_INFERENCE_SECRET=secrets.token_hex(16),
            LORASP_SERVING_MAX_ADAPTERS="16",  # all 8 resident: nothing evicted during the load
            LORASP_SERVING_MAX_RESIDENT_PER_TENANT="16",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONPATH=str(REPO_ROOT),
        )
        adapters = make_adapters(args.model, Path(home) / "made", ADAPTER_COUNT, args.rank)
        state: dict[str, Any] = {"key": key, "adapter_ids": []}
        tiers = [measure_tier(count, env, adapters, state, args) for count in (1, 2)]
    return {
        "benchmark": "serving_tier",
        "command": "python -m benchmarks.serving_tier " + " ".join(sys.argv[1:]),
        "settings": {name: str(value) for name, value in vars(args).items() if name != "out"},
        "database": "SQLite (embedded default, temporary LORASP_HOME)",
        "machine": {**machine_description(), "load_average_at_end": list(os.getloadavg())},
        "tiers": tiers,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Inference tier: one vs two `lorasp inference` processes behind the API",
        "",
        f"Command: `{results['command']}`. Database: {results['database']}.",
        f"Settings: {results['settings']}.",
        f"Machine: {results['machine']}.",
        "",
        "| processes | torch threads each | requests | failed | req/s | p50 ms | p99 ms | served per process "
        "| affinity held |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for tier in results["tiers"]:
        lines.append(
            f"| {tier['processes']} | {tier['torch_threads_per_process']} | {tier['requests']} "
            f"| {tier['failed']} "
            f"| {tier['requests_per_second']} | {tier['p50_ms']} | {tier['p99_ms']} "
            f"| {tier['served_per_process']} | {tier['affinity_held']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny-random-llama, few requests (smoke run)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "serving_tier")
    parser.add_argument("--requests", type=int, default=None, help="N (default 48; 16 with --quick)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=None, help="default 16; 4 with --quick")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="bound on each tier's load phase")
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args(argv)
    args.model = "tiny-random-llama" if args.quick else "smollm2-135m-instruct"
    args.requests = args.requests or (16 if args.quick else 48)
    args.max_tokens = args.max_tokens or (4 if args.quick else 16)
    results = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
