"""Queue order at the broker: a consumer built from the shared Celery configuration reads the resume
queue before the main one, on Redis and on the embedded filesystem broker, even when the resumed job
was sent after never-started ones. (test_worker_recovery.py checks the same through real workers.)"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Message

from lorasp_service.queue import RUN_JOB_TASK, enqueue_job, make_celery
from lorasp_service.settings import Settings


def consumption_order(settings: Settings) -> list[str]:
    """Send two never-started jobs, then two resumed ones, then one more; return the order read.

    Two resumed jobs: kombu's default round robin also reads the first one first, but then moves on to
    the main queue before the second.
    """
    for job_id in ("new-1", "new-2"):
        enqueue_job(settings, job_id)
    for job_id in ("resumed-1", "resumed-2"):
        enqueue_job(settings, job_id, resume=True)
    enqueue_job(settings, "new-3")
    app = make_celery(settings)
    received: list[str] = []

    def on_message(body: Any, message: Message) -> None:
        assert message.headers["task"] == RUN_JOB_TASK
        received.append(str(message.headers["argsrepr"]).strip("[]()',"))
        message.ack()

    with (
        app.connection_for_read() as connection,
        connection.Consumer(
            list(app.amqp.queues.values()), callbacks=[on_message], accept=["json"], prefetch_count=1
        ),
    ):
        while len(received) < 5:
            connection.drain_events(timeout=10)
        with pytest.raises(TimeoutError):  # and no message was copied into both queues
            connection.drain_events(timeout=1)
    return received


IN_ORDER = ["resumed-1", "resumed-2", "new-1", "new-2", "new-3"]


def test_the_filesystem_broker_reads_the_resume_queue_first(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, broker_url="filesystem://", database_url="sqlite://")
    received = consumption_order(settings)
    # kombu's filesystem transport orders one queue's messages by file name (a millisecond timestamp,
    # then a uuid), so two sent in the same millisecond come in either order: compare within a queue as
    # sets. Round robin across the queues would still fail this (new-1 second).
    assert set(received[:2]) == {"resumed-1", "resumed-2"}, received
    assert set(received[2:]) == {"new-1", "new-2", "new-3"}, received


@pytest.mark.services
def test_redis_reads_the_resume_queue_first(redis_url: str) -> None:
    tag = secrets.token_hex(4)
    settings = Settings(
        broker_url=redis_url,
        broker_key_prefix=f"order-{tag}:",
        queue_name=f"order-{tag}",
        database_url="sqlite://",
    )
    try:
        assert consumption_order(settings) == IN_ORDER
    finally:
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(f"order-{tag}:*"))
        if keys:
            client.delete(*keys)
