"""GET /metrics: Prometheus text that a Prometheus parser reads, whose counters move with the traffic."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from api_helpers import EnqueueRecorder
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from serving_api_helpers import make_llama_adapter, register_adapter
from sqlalchemy import update
from sqlalchemy.orm import Session

from api.deps import get_enqueue
from api.main import create_app
from lorasp_service.jobs import add_event
from lorasp_service.orm import Job
from lorasp_service.settings import Settings

LLAMA = "tiny-random-llama"
MESSAGES = [{"role": "user", "content": "Say something"}]


@pytest.fixture(scope="module")
def metrics_client(api_settings: Settings) -> Iterator[TestClient]:
    app = create_app(api_settings.model_copy(update={"metrics_enabled": True}))
    app.dependency_overrides[get_enqueue] = lambda: EnqueueRecorder()  # no job reaches a broker
    with TestClient(app) as client:
        yield client


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> tuple[str, Samples]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text, parse(response.text)


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, read by prometheus-client's own parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_are_off_unless_enabled(api_settings: Settings) -> None:
    with TestClient(create_app(api_settings)) as client:
        assert client.get("/metrics").status_code == 404


def test_http_and_inference_counters_move_with_requests(
    metrics_client: TestClient,
    make_tenant: Callable[[], dict[str, str]],
    db: Session,
    api_settings: Settings,
    tmp_path: Path,
) -> None:
    tenant = make_tenant()
    make_llama_adapter(tmp_path / "adapter", seed=5)
    adapter_id = register_adapter(db, api_settings, tenant["X-Tenant-Id"], tmp_path / "adapter")
    _, before = scrape(metrics_client)

    for _ in range(3):
        assert metrics_client.get("/v1/models", headers=tenant).status_code == 200
    assert metrics_client.get("/v1/files/file-none", headers=tenant).status_code == 404
    assert metrics_client.get("/v1/no-such-route").status_code == 404
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    for _ in range(2):
        body = {"model": adapter_id, "messages": MESSAGES, "max_tokens": 6, "temperature": 0}
        answer = metrics_client.post("/v1/chat/completions", headers=tenant, json=body)
        assert answer.status_code == 200, answer.text
        for name in usage:
            usage[name] += answer.json()["usage"][name]

    text, after = scrape(metrics_client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("lorasp_http_requests_total", method="GET", route="/v1/models", status="200") == 3
    assert moved("lorasp_http_requests_total", method="GET", route="/v1/files/{file_id}", status="404") == 1
    assert moved("lorasp_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    chat_route = {"method": "POST", "route": "/v1/chat/completions"}
    assert moved("lorasp_http_request_duration_seconds_count", **chat_route) == 2
    assert moved("lorasp_http_request_duration_seconds_sum", **chat_route) > 0

    model = {"base_model": LLAMA, "adapter": adapter_id}
    assert usage["completion_tokens"] > 0
    assert moved("lorasp_inference_prompt_tokens_total", **model) == usage["prompt_tokens"]
    assert moved("lorasp_inference_completion_tokens_total", **model) == usage["completion_tokens"]
    assert moved("lorasp_inference_time_to_first_token_seconds_count", **model) == 2

    # The engine's own figures, read at scrape time.
    assert moved("lorasp_adapter_cache_loads_total") >= 1
    assert moved("lorasp_adapter_cache_hits_total") >= 2  # each request found it resident
    assert value(after, "lorasp_adapter_cache_resident") >= 1
    assert moved("lorasp_serving_batch_rows_total") == 2
    assert ("lorasp_serving_queue_depth", frozenset()) in after
    # Both chats have finished: no row decodes, none waits, no KV cache is held (the figures move
    # while requests run: tests/serving/test_continuous_bounds.py).
    for idle in (
        "lorasp_serving_running_rows",
        "lorasp_serving_waiting_requests",
        "lorasp_serving_kv_cache_bytes",
    ):
        assert after[(idle, frozenset())] == 0
    assert ("lorasp_adapter_cache_evictions_total", frozenset()) in after
    # No secret in the text: keys are never labels.
    assert tenant["Authorization"].removeprefix("Bearer ") not in text


def test_jobs_by_status_and_training_speed_come_from_the_database(
    metrics_client: TestClient, make_tenant: Callable[[], dict[str, str]], db: Session
) -> None:
    tenant = make_tenant()
    upload = metrics_client.post(
        "/v1/files",
        headers=tenant,
        files={"file": ("train.jsonl", b'{"prompt": "a", "completion": "b"}\n' * 4)},
        data={"purpose": "fine-tune"},
    )
    assert upload.status_code == 200, upload.text
    _, before = scrape(metrics_client)
    created = metrics_client.post(
        "/v1/fine_tuning/jobs", headers=tenant, json={"model": LLAMA, "training_file": upload.json()["id"]}
    )
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]
    _, queued = scrape(metrics_client)
    assert value(queued, "lorasp_jobs", status="queued") == value(before, "lorasp_jobs", status="queued") + 1
    assert ("lorasp_jobs", frozenset({("status", "paused")})) in queued  # every status, even at 0

    # What a worker writes: the job runs and reports its speed in a metrics event.
    db.execute(update(Job).where(Job.id == job_id).values(status="running"))
    add_event(db, job_id, "Step 1/4", type="metrics", data={"step": 1, "tokens_per_second": 10.0})
    add_event(db, job_id, "Step 2/4", type="metrics", data={"step": 2, "tokens_per_second": 123.5})
    db.commit()
    _, running = scrape(metrics_client)
    assert value(running, "lorasp_training_tokens_per_second", job=job_id, base_model=LLAMA) == 123.5
    assert value(running, "lorasp_metrics_database_up") == 1

    db.execute(update(Job).where(Job.id == job_id).values(status="cancelled"))
    db.commit()
    _, finished = scrape(metrics_client)
    labels = frozenset({("job", job_id), ("base_model", LLAMA)})
    assert ("lorasp_training_tokens_per_second", labels) not in finished  # only running jobs


MULTIPROCESS_SCRIPT = """
import os, sys
from api import metrics
from api.deps import AppResources
from lorasp_service.settings import Settings
from prometheus_client import generate_latest

children = []
for _ in range(2):  # two uvicorn workers, each counting one request
    pid = os.fork()
    if pid == 0:
        metrics.HTTP_REQUESTS.labels("GET", "/v1/models", "200").inc()
        metrics.observe_generation("tiny-random-llama", None, 5, 7, 0.5)
        os._exit(0)
    children.append(pid)
for pid in children:
    assert os.waitpid(pid, 0)[1] == 0
resources = AppResources(Settings(home=sys.argv[1]))  # an empty database: its figures report down
sys.stdout.write(generate_latest(metrics.scrape_registry(resources)).decode())
"""


def test_multiprocess_mode_sums_the_workers(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR set (several uvicorn workers): a scrape of one sums every worker."""
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT, str(tmp_path / "home")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    samples = parse(done.stdout)
    assert value(samples, "lorasp_http_requests_total", method="GET", route="/v1/models", status="200") == 2
    model = {"base_model": LLAMA, "adapter": ""}
    assert value(samples, "lorasp_inference_completion_tokens_total", **model) == 14
    assert value(samples, "lorasp_inference_time_to_first_token_seconds_count", **model) == 2
    assert value(samples, "lorasp_metrics_database_up") == 0
