"""Two real `lorasp inference` processes behind a `lorasp serve` with LORASP_INFERENCE_URLS.

Same adapter -> same process (its hot list says so, and it is the rendezvous first choice); adapters
spread over both; SIGKILL one -> its adapters move to the other with at most one failed request; the
API process never loaded a model (the processes' logs say they did).
"""

from __future__ import annotations

import io
import secrets
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from e2e_stack import REPO_ROOT, Stack, free_port, wait_until

from api.inference_tier.rendezvous import rendezvous_order, routing_key
from lorasp_core.adapters import apply_lorasp, save_adapter
from lorasp_core.config import LoraSPConfig
from lorasp_core.models import tiny_random_llama
from lorasp_service.process_group import spawn_logged, stop_group

MODEL = "tiny-random-llama"
RESIDENT_LOG = f"base model '{MODEL}' resident"


@dataclass
class Tier:
    api: httpx.Client
    urls: list[str]
    processes: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]
    serve_log: Path
    secret: str

    def hot(self, url: str) -> set[str]:
        headers = {"Authorization": f"Bearer {self.secret}"}
        response = httpx.get(url + "/health", headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        return {entry["adapter_id"] for entry in response.json()["hot"]}

    def complete(self, adapter_id: str) -> httpx.Response:
        return self.api.post("/completions", json={"model": adapter_id, "prompt": "ab", "max_tokens": 3})


@pytest.fixture(scope="module")
def tier(stack: Stack) -> Iterator[Tier]:
    secret = secrets.token_hex(16)
    # Room for every adapter on one process (the survivor holds them all): nothing evicted in the test.
    env = dict(
        stack.env,
        LORASP_INFERENCE_SECRET=secret,
        LORASP_SERVING_MAX_ADAPTERS="16",
        LORASP_SERVING_MAX_RESIDENT_PER_TENANT="16",
    )
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    api_port = free_port()
    api_env = dict(
        env,
        LORASP_PORT=str(api_port),
        LORASP_INFERENCE_URLS='["' + '","'.join(urls) + '"]',
        LORASP_INFERENCE_HEALTH_INTERVAL_SECONDS="0.5",
        LORASP_INFERENCE_RETRY_BACKOFF_SECONDS="2",
    )
    serve_log = stack.logs / "tier-serve.log"
    for index, (port, url) in enumerate(zip(ports, urls, strict=True)):
        logs[url] = stack.logs / f"inference-{index}.log"
        command = [sys.executable, "-m", "lorasp_service.cli", "inference", "--port", str(port)]
        processes[url] = spawn_logged(command + ["--name", f"inference-{index}"], env, logs[url], REPO_ROOT)
    server = spawn_logged(
        [sys.executable, "-m", "lorasp_service.cli", "serve", "--no-worker"], api_env, serve_log, REPO_ROOT
    )
    base_url = f"http://127.0.0.1:{api_port}"
    api = httpx.Client(base_url=base_url + "/v1", headers=stack.headers, timeout=60)
    tier = Tier(api, urls, processes, logs, serve_log, secret)

    def up() -> bool:
        for process, log in [(server, serve_log), *((processes[u], logs[u]) for u in urls)]:
            assert process.poll() is None, log.read_text()
        try:
            ok = httpx.get(base_url + "/health", timeout=2).status_code == 200
            return ok and all(tier.hot(url) is not None for url in urls)
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 90, "the API and two inference processes")
        yield tier
    finally:
        api.close()
        for process in [server, *processes.values()]:
            stop_group(process)


def adapter_archive(seed: int, scratch: Path) -> bytes:
    """A LoRA-SP adapter of the tiny llama with non-zero B (B starts at zero: a no-op), as a .tar.gz."""
    model = apply_lorasp(tiny_random_llama(seed=0), LoraSPConfig(r=2, mask_seed=seed, init_seed=seed))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B_trainable" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    directory = scratch / f"adapter-{seed}"
    save_adapter(model, directory, base_model_name_or_path=MODEL, task_type="causal-lm")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(directory, arcname="adapter")
    return buffer.getvalue()


def upload(tier: Tier, seed: int, scratch: Path) -> str:
    files = {"file": ("adapter.tar.gz", adapter_archive(seed, scratch))}
    response = tier.api.post("/adapters", data={"base_model": MODEL, "suffix": f"t{seed}"}, files=files)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def first_choice(tier: Tier, adapter_id: str) -> str:
    return rendezvous_order(routing_key(MODEL, adapter_id), tier.urls)[0]


def test_affinity_spread_and_failover_with_no_model_in_the_api(tier: Tier, tmp_path: Path) -> None:
    # Uploads run the base-model checks on an inference process too. Enough adapters for both processes.
    adapters: list[str] = []
    while len(adapters) < 4 or len({first_choice(tier, a) for a in adapters}) < 2:
        assert len(adapters) < 16, "rendezvous hashing put 16 adapters on one process"
        adapters.append(upload(tier, len(adapters) + 1, tmp_path))
    for _ in range(2):
        for adapter in adapters:
            response = tier.complete(adapter)
            assert response.status_code == 200, response.text
    hot = {url: tier.hot(url) for url in tier.urls}
    for adapter in adapters:  # same adapter -> same process: hot on its first choice only
        holders = [url for url in tier.urls if adapter in hot[url]]
        assert holders == [first_choice(tier, adapter)], (adapter, hot)
    assert all(hot[url] for url in tier.urls)  # both processes used
    listed = tier.api.get("/adapters/loaded").json()["data"]
    assert {entry["id"] for entry in listed} == set(adapters)  # the API lists the processes' adapters

    # An engine error on the process is the API's usual typed answer (ValueError -> 400), not a 500.
    too_long = tier.api.post("/completions", json={"model": adapters[0], "prompt": "ab", "max_tokens": 10**6})
    assert too_long.status_code == 400, too_long.text
    assert too_long.json()["error"]["code"] == "invalid_request"
    assert "exceeds the model's context" in too_long.json()["error"]["message"]

    dead, survivor = tier.urls
    tier.processes[dead].send_signal(signal.SIGKILL)
    tier.processes[dead].wait(30)
    statuses = [tier.complete(adapter).status_code for adapter in adapters for _ in range(2)]
    assert statuses.count(200) >= len(statuses) - 1, statuses  # at most one failed request
    assert set(adapters) <= tier.hot(survivor)  # the dead one's adapters moved (loaded from the registry)

    body = {"model": adapters[0], "prompt": "ab", "max_tokens": 3, "stream": True}
    with tier.api.stream("POST", "/completions", json=body) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and not any('"error"' in event for event in events)

    assert RESIDENT_LOG not in tier.serve_log.read_text()  # the API process loaded no model
    assert all(RESIDENT_LOG in tier.logs[url].read_text() for url in tier.urls)
