"""Admission before work: a job goes to the smallest resource class that holds its estimated peak
memory, and one that no class can hold is a 400 with the estimate and the largest capacity."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from api_helpers import EnqueueRecorder, assert_error, chat_rows, create_job, jsonl, upload
from fastapi.testclient import TestClient

from api.deps import get_enqueue
from api.main import create_app
from lorasp_service.queue import job_queue_name, resume_queue_name, service_queue_name, worker_queue_names
from lorasp_service.settings import ResourceClass, Settings

SMALL = ResourceClass(name="small", memory_gib=0.1)  # below the runtime alone: holds no job
BIG = ResourceClass(name="big", memory_gib=4.0, device="cuda", gpu_type="test-gpu")


def _client(settings: Settings, enqueue: Any | None) -> TestClient:
    app = create_app(settings)
    if enqueue is not None:
        app.dependency_overrides[get_enqueue] = lambda: enqueue
    return TestClient(app)


@pytest.fixture()
def two_classes(api_settings: Settings) -> Iterator[tuple[TestClient, EnqueueRecorder]]:
    recorder = EnqueueRecorder()
    settings = api_settings.model_copy(update={"resource_classes": [BIG, SMALL]})
    with _client(settings, recorder) as client:
        yield client, recorder


def _chat_file(client: TestClient, headers: dict[str, str]) -> str:
    return str(upload(client, headers, jsonl(chat_rows())).json()["id"])


def test_a_job_goes_to_the_smallest_class_that_holds_it(
    two_classes: tuple[TestClient, EnqueueRecorder], alice: dict[str, str]
) -> None:
    client, recorder = two_classes
    response = create_job(client, alice, _chat_file(client, alice))
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["resource_class"] == "big"
    assert 0.1 * 2**30 < job["estimated_memory_bytes"] <= 4 * 2**30
    assert recorder.resource_classes[job["id"]] == "big"
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=alice).json()["resource_class"] == "big"


def test_the_estimate_grows_with_the_batch(
    two_classes: tuple[TestClient, EnqueueRecorder], alice: dict[str, str]
) -> None:
    client, _ = two_classes
    file_id = _chat_file(client, alice)
    small, large = (
        create_job(
            client,
            alice,
            file_id,
            method={"type": "lorasp", "lorasp": {"hyperparameters": {"batch_size": n}}},
        ).json()["estimated_memory_bytes"]
        for n in (1, 64)
    )
    assert large > small


def test_a_job_no_class_can_hold_is_a_400_with_the_estimate_and_the_largest_capacity(
    api_settings: Settings, alice: dict[str, str]
) -> None:
    recorder = EnqueueRecorder()
    with _client(api_settings.model_copy(update={"resource_classes": [SMALL]}), recorder) as client:
        file_id = _chat_file(client, alice)
        response = create_job(client, alice, file_id)
        body = assert_error(
            response, 400, param="method.supervised.hyperparameters.batch_size", code="insufficient_capacity"
        )
        message = body["message"]
        assert "estimated" in message and "GiB" in message and "'small': 0.1 GiB" in message
        assert recorder.job_ids == []  # nothing queued
        jobs = client.get("/v1/fine_tuning/jobs", headers=alice).json()["data"]
        assert all(job["training_file"] != file_id for job in jobs)  # nothing created either


def test_the_job_message_lands_on_its_class_queue(api_settings: Settings, alice: dict[str, str]) -> None:
    settings = api_settings.model_copy(
        update={"resource_classes": [BIG], "queue_name": f"admit-{secrets.token_hex(4)}"}
    )
    broker = redis.Redis.from_url(settings.broker_url)
    queue = settings.broker_key_prefix + job_queue_name(settings, "big")
    try:
        with _client(settings, None) as client:  # the real enqueue, to the test Redis
            job = create_job(client, alice, _chat_file(client, alice)).json()
        messages = [json.loads(item) for item in broker.lrange(queue, 0, -1)]
        assert [job["id"] in message["headers"]["argsrepr"] for message in messages] == [True]
        assert broker.llen(settings.broker_key_prefix + settings.queue_name) == 0
    finally:
        broker.delete(queue)


def test_workers_consume_the_service_queue_and_their_classes_resume_queues_first(
    api_settings: Settings,
) -> None:
    settings = api_settings.model_copy(
        update={"resource_classes": [BIG, SMALL], "worker_queues": "small, big", "queue_name": "q"}
    )
    assert worker_queue_names(settings) == [
        service_queue_name(settings),
        "q.small.resume",
        "q.big.resume",
        "q.small",
        "q.big",
    ]
    default = api_settings.model_copy(update={"queue_name": "q"})
    assert worker_queue_names(default) == ["q.service", resume_queue_name(default), "q"]


def _lorasp_job(client: TestClient, headers: dict[str, str], file_id: str, **knobs: Any) -> Any:
    return create_job(
        client, headers, file_id, method={"type": "lorasp", "lorasp": {"hyperparameters": knobs}}
    )


def test_the_estimate_of_a_data_parallel_job_is_per_rank_and_cpu_ranks_share_the_class(
    api_settings: Settings, alice: dict[str, str]
) -> None:
    roomy = ResourceClass(name="roomy", memory_gib=1000.0)
    with _client(api_settings.model_copy(update={"resource_classes": [roomy]}), EnqueueRecorder()) as client:
        file_id = _chat_file(client, alice)
        one_rank = _lorasp_job(client, alice, file_id, batch_size=4).json()["estimated_memory_bytes"]
        two_ranks = _lorasp_job(client, alice, file_id, batch_size=8, processes=2).json()
    assert two_ranks["estimated_memory_bytes"] == one_rank  # each rank holds 4 of the 8 examples
    # a CPU class holding 1.5 ranks' estimate: one rank fits, two ranks in its memory do not
    cpu = ResourceClass(name="cpu", memory_gib=1.5 * one_rank / 2**30)
    with _client(api_settings.model_copy(update={"resource_classes": [cpu]}), EnqueueRecorder()) as small:
        assert _lorasp_job(small, alice, file_id, batch_size=4).status_code == 200
        refused = _lorasp_job(small, alice, file_id, batch_size=8, processes=2)
        message = assert_error(refused, 400, code="insufficient_capacity")["message"]
        assert "per rank, 2 ranks" in message
