"""API load benchmark: lorasp's `GET /v1/models` side by side with a bare FastAPI endpoint, and uploads.

    python -m benchmarks.api_load [--requests 3000] [--rounds 3] [--concurrency 20] [--max-seconds 30]

It creates a fresh Postgres database (dropped at the end), migrates it, creates a tenant and its key,
then starts two uvicorn servers on 127.0.0.1 with the same options: lorasp (`api.main:app`) and
`benchmarks.api_load_bare` (one endpoint doing the same indexed key lookup). Rounds of `GET /v1/models`
alternate between the two so that both see the same machine load; the median round of each is
reported with their ratio. Then `POST /v1/files` of a 120-byte JSONL file on lorasp. Every request
goes to loopback; each phase is bounded in requests and seconds. Results: benchmarks/results/api_load.json
and .md, with the machine described.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from benchmarks.common import machine_description
from benchmarks.load_client import LoadResult, Send, run_load
from lorasp_service.auth import create_tenant_with_key
from lorasp_service.db import migrate, session_scope, temporary_postgres_database
from lorasp_service.settings import Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_ADMIN_URL = os.environ.get(
    "LORASP_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
LOOPBACK = "127.0.0.1"
# A one-example chat dataset of exactly 120 bytes (the upload size).
UPLOAD_BYTES = (
    b'{"messages": [{"role": "user", "content": "Say hi to the bench"}, '
    b'{"role": "assistant", "content": "Hi, benchmark!!"}]}\n'
)
assert len(UPLOAD_BYTES) == 120, len(UPLOAD_BYTES)


def fresh_database(admin_url: str) -> AbstractContextManager[str]:
    return temporary_postgres_database(admin_url, "lorasp_bench")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Server:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc): the cost of its requests
        whatever else runs on the machine, where req/s depends on the other processes."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def uvicorn_server(target: str, env: dict[str, str], *, factory: bool = False) -> Iterator[Server]:
    """One uvicorn process (one worker, no access log) serving `target`."""
    port = free_port()
    # A keep-alive longer than any pause between rounds: a connection closed by the server while the
    # client reuses it would count as an error of the endpoint.
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--timeout-keep-alive",
        "120",
    ]
    command += ["--factory"] if factory else []
    process = subprocess.Popen(command, env={**os.environ, **env})
    base_url = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{target} exited with {process.returncode} before answering")
            try:
                httpx.get(base_url + "/v1/models", timeout=1.0, trust_env=False)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{target} did not answer within 60 s") from None
                time.sleep(0.2)
        yield Server(base_url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Round:
    load: LoadResult
    server_cpu_ms_per_request: float


async def measured(server: Server, send: Send, *, requests: int, args: argparse.Namespace) -> Round:
    cpu_before = server.cpu_seconds()
    load = await run_load(
        server.url, send, requests=requests, concurrency=args.concurrency, max_seconds=args.max_seconds
    )
    cpu_ms = 1000.0 * (server.cpu_seconds() - cpu_before) / max(1, load.requests)
    return Round(load, round(cpu_ms, 3))


def round_dict(measured_round: Round) -> dict[str, Any]:
    return {
        **measured_round.load.to_dict(),
        "server_cpu_ms_per_request": measured_round.server_cpu_ms_per_request,
    }


def median_round(rounds: list[Round]) -> Round:
    """The round with the median throughput (the lower middle one for an even count)."""
    return sorted(rounds, key=lambda r: r.load.requests_per_second)[(len(rounds) - 1) // 2]


async def compare_models(
    lorasp: Server, bare: Server, headers: dict[str, str], args: argparse.Namespace
) -> dict[str, list[Round]]:
    async def send(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get("/v1/models", headers=headers)

    rounds: dict[str, list[Round]] = {"lorasp": [], "bare": []}
    for server in (lorasp, bare):  # warm-up: pools, imports, caches
        await run_load(server.url, send, requests=args.warmup, concurrency=args.concurrency, max_seconds=10)
    for index in range(args.rounds):
        # Alternate which goes first so a drift in the machine's load favours neither.
        order = (("lorasp", lorasp), ("bare", bare))
        for name, server in order if index % 2 == 0 else order[::-1]:
            result = await measured(server, send, requests=args.requests, args=args)
            rounds[name].append(result)
            load = result.load
            print(
                f"round {index + 1} {name:6s} {load.requests_per_second:8.1f} req/s  "
                f"p50 {load.p50_ms:6.1f} ms  p99 {load.p99_ms:6.1f} ms  "
                f"server CPU {result.server_cpu_ms_per_request:.2f} ms/request  errors {load.errors}"
            )
    return rounds


async def upload_load(lorasp: Server, headers: dict[str, str], args: argparse.Namespace) -> Round:
    async def send(client: httpx.AsyncClient) -> httpx.Response:
        files = {"file": ("bench.jsonl", UPLOAD_BYTES, "application/jsonl")}
        return await client.post("/v1/files", headers=headers, files=files, data={"purpose": "fine-tune"})

    await run_load(
        lorasp.url, send, requests=min(50, args.upload_requests), concurrency=args.concurrency, max_seconds=10
    )
    return await measured(lorasp, send, requests=args.upload_requests, args=args)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with fresh_database(args.admin_url) as database_url, tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), database_url=database_url, enabled_models=None)
        migrate(settings)
        with session_scope(settings) as session:
            _, key = create_tenant_with_key(session, "bench")
            session.commit()
        headers = {"Authorization": f"Bearer {key}"}
        # The broker is never used by these endpoints; the filesystem default keeps Redis out of it.
        env = {"LORASP_HOME": home, "LORASP_DATABASE_URL": database_url, "OMP_NUM_THREADS": "1"}
        with (
            uvicorn_server("api.main:app", env) as lorasp,
            uvicorn_server("benchmarks.api_load_bare:create_bare_app", env, factory=True) as bare,
        ):
            rounds = asyncio.run(compare_models(lorasp, bare, headers, args))
            upload = asyncio.run(upload_load(lorasp, headers, args))
    ours, theirs = median_round(rounds["lorasp"]), median_round(rounds["bare"])
    return {
        "benchmark": "api_load",
        "command": "python -m benchmarks.api_load " + " ".join(sys.argv[1:]),
        "settings": {k: str(v) for k, v in vars(args).items() if k not in {"admin_url", "out_dir", "note"}},
        "machine": {**machine_description(), "load_average_at_end": list(os.getloadavg())},
        "note": args.note,
        "get_models": {
            "lorasp": round_dict(ours),
            "bare": round_dict(theirs),
            "ratio": round(ours.load.requests_per_second / theirs.load.requests_per_second, 3),
            "cpu_ratio": round(theirs.server_cpu_ms_per_request / ours.server_cpu_ms_per_request, 3),
            "rounds": {name: [round_dict(r) for r in rs] for name, rs in rounds.items()},
        },
        "post_files_120_bytes": round_dict(upload),
    }


def markdown(results: dict[str, Any]) -> str:
    models, upload, machine = results["get_models"], results["post_files_120_bytes"], results["machine"]
    rows = [
        ("lorasp `GET /v1/models`", models["lorasp"]),
        ("bare FastAPI, same key lookup", models["bare"]),
        ("lorasp `POST /v1/files` (120 bytes)", upload),
    ]
    per_round = {name: [r["requests_per_second"] for r in rs] for name, rs in models["rounds"].items()}
    lines = [
        "# API load benchmark",
        "",
        f"`{results['command']}`: {results['settings']['concurrency']} concurrent keep-alive clients "
        "(httpx, in the benchmark process), one uvicorn worker per app, Postgres on loopback.",
        "",
        "| endpoint | req/s | p50 ms | p99 ms | server CPU ms/request | requests | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {r['requests_per_second']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['server_cpu_ms_per_request']} | {r['requests']} | {r['errors']} |"
            for name, r in rows
        ),
        "",
        f"**Throughput ratio lorasp / bare: {models['ratio']}** (median of {results['settings']['rounds']} "
        f"alternating rounds each; req/s per round: lorasp {per_round['lorasp']}, bare {per_round['bare']}). "
        f"Server CPU per request, bare / lorasp: {models['cpu_ratio']}.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, Python "
        f"{machine['python']}, {machine['platform']}; load average at the end "
        f"{[round(x, 2) for x in machine['load_average_at_end']]}.",
    ]
    if results.get("note"):
        lines += ["", f"Note: {results['note']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL, help="a Postgres server URL (loopback)")
    parser.add_argument("--requests", type=int, default=3000, help="GET /v1/models requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--upload-requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="cap on each round")
    parser.add_argument("--note", default="", help="written into the results (e.g. the machine was shared)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    host = make_url(args.admin_url).host
    if host not in (None, "", LOOPBACK, "localhost", "::1"):
        parser.error("the benchmark only talks to loopback: --admin-url must point at 127.0.0.1")
    results = run(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "api_load.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out_dir / "api_load.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
