"""Fault injection on PostgreSQL + Redis: jobs on two workers, a worker SIGKILLed mid-job several times.

Each kill takes the whole process group of the worker that holds a running job with a checkpoint, and
no worker is restarted until the survivor has taken the job over; only then is a replacement started,
so there is something to kill next time. Every job must succeed exactly once (one adapter, one
completion event), each killed job resumed from a checkpoint (resume step > 0).

With LORASP_FAULT_INJECTION_RESULTS=<folder> (`python -m benchmarks.fault_injection`) the figures are
written there as fault_injection.json and .md: per kill, the time from the kill until another worker
held the job (take-over) and until that worker recorded the job's next training step (recovery).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from e2e_stack import Stack, chat_rows, events_of, wait_for_end, wait_until

from lorasp_service import jobs

pytestmark = pytest.mark.services

JOBS, KILLS, STEPS = 5, 3, 144  # 5 jobs: a later kill still finds one running far from its end
# 24 rows x 30 words, batch 4, 24 epochs: 144 steps, checkpoint every 10 (the stack's setting).
ROWS, HYPERPARAMETERS = {"count": 24, "words": 30}, {"n_epochs": 24, "batch_size": 4}
RESULTS_ENV = "LORASP_FAULT_INJECTION_RESULTS"


@dataclass(frozen=True)
class Kill:
    job_id: str
    worker_pid: int
    step_at_kill: int
    checkpoint_step: int
    takeover_seconds: float  # kill -> another worker holds the lease
    recovery_seconds: float  # kill -> the job's next training step under that worker
    resumed_from_step: int


def latest_step(stack: Stack, job_id: str) -> tuple[int, int]:
    """(step, total steps) of the job's newest metrics event, (0, 0) before the first."""
    query = sa.text(
        "SELECT data FROM fine_tuning_job_events WHERE job_id = :id AND type = 'metrics' "
        "ORDER BY created_at DESC LIMIT 1"
    )
    with stack.engine.connect() as conn:
        data = conn.execute(query, {"id": job_id}).scalar()
    return (int(data["step"]), int(data["total_steps"])) if data else (0, 0)


def newest_checkpoint(stack: Stack, job_id: str) -> int:
    query = sa.text("SELECT max(step) FROM fine_tuning_checkpoints WHERE job_id = :id")
    with stack.engine.connect() as conn:
        return int(conn.execute(query, {"id": job_id}).scalar() or 0)


def first_progress_after(stack: Stack, job_id: str, moment: datetime, worker_id: str) -> datetime | None:
    """When the job's first metrics event after `moment` was written, once `worker_id` holds it."""
    if stack.job_row(job_id)["worker_id"] != worker_id:
        return None
    query = sa.text(
        "SELECT min(created_at) FROM fine_tuning_job_events WHERE job_id = :id "
        "AND type = 'metrics' AND created_at > :moment"
    )
    with stack.engine.connect() as conn:
        value = conn.execute(query, {"id": job_id, "moment": moment}).scalar()
    return value.replace(tzinfo=moment.tzinfo) if value is not None and value.tzinfo is None else value


def victim(stack: Stack, job_ids: list[str], killed: set[str]) -> tuple[str, Any] | None:
    """A job running with a checkpoint and far from its end, and its worker; one never killed before
    if there is one (a job killed before may be killed again: its new worker is as mortal)."""
    candidates = []
    for job_id in job_ids:
        if stack.job_row(job_id)["status"] != "running":
            continue
        step, total = latest_step(stack, job_id)
        holder = stack.worker_holding(job_id)
        if newest_checkpoint(stack, job_id) > 0 and step < total - 20 and holder is not None:
            candidates.append((job_id in killed, job_id, holder))
    if not candidates:
        return None
    _, job_id, holder = min(candidates, key=lambda candidate: candidate[0])
    return job_id, holder


def kill_one(stack: Stack, job_ids: list[str], killed: set[str]) -> Kill:
    job_id, holder = wait_until(lambda: victim(stack, job_ids, killed), 240, "a running job to kill")
    before = stack.job_row(job_id)
    step, _ = latest_step(stack, job_id)
    checkpoint = newest_checkpoint(stack, job_id)
    killed_at, killed_wall = time.monotonic(), jobs.utcnow()
    stack.sigkill(holder)
    assert stack.live_workers(), "a worker must survive each kill"

    def taken_over() -> str | None:
        row = stack.job_row(job_id)
        return row["worker_id"] if row["attempts"] > before["attempts"] else None

    new_worker = wait_until(taken_over, 120, f"a surviving worker to take over {job_id}")
    takeover = time.monotonic() - killed_at
    progressed = wait_until(
        lambda: first_progress_after(stack, job_id, killed_wall, new_worker),
        120,
        f"{job_id} to make progress under {new_worker}",
    )
    with stack.client() as client:
        resumed = [
            event["data"]["resumed_from_step"]
            for event in events_of(client, job_id)
            if (event.get("data") or {}).get("resumed_from_step") is not None
        ]
    return Kill(
        job_id=job_id,
        worker_pid=holder.pid,
        step_at_kill=step,
        checkpoint_step=checkpoint,
        takeover_seconds=round(takeover, 2),
        recovery_seconds=round((progressed - killed_wall).total_seconds(), 2),
        resumed_from_step=max(resumed, default=0),
    )


def test_every_job_succeeds_once_through_repeated_worker_kills(stack: Stack) -> None:
    stack.ensure_workers(2)
    started = time.monotonic()
    with stack.client() as client:
        file_id = stack.upload(client, chat_rows(**ROWS))
        job_ids = [stack.create_job(client, file_id, **HYPERPARAMETERS)["id"] for _ in range(JOBS)]
        kills: list[Kill] = []
        for _ in range(KILLS):
            kills.append(kill_one(stack, job_ids, {kill.job_id for kill in kills}))
            if len(kills) < KILLS:
                stack.ensure_workers(2)  # a replacement, so that the next kill leaves a survivor too
        finals = [wait_for_end(client, job_id, 180) for job_id in job_ids]
        completions = {
            job_id: sum(
                event["message"] == "The job has successfully completed"
                for event in events_of(client, job_id)
            )
            for job_id in job_ids
        }
    elapsed = time.monotonic() - started

    assert all(latest_step(stack, job_id) == (STEPS, STEPS) for job_id in job_ids)
    assert [final["status"] for final in finals] == ["succeeded"] * JOBS, [final["error"] for final in finals]
    assert completions == dict.fromkeys(job_ids, 1)
    assert all(stack.count("adapters", job_id) == 1 for job_id in job_ids)
    for kill in kills:
        assert 0 < kill.checkpoint_step <= kill.resumed_from_step, kill
    for job_id in job_ids:  # one attempt, plus one per kill of its worker: no duplicate run
        assert stack.job_row(job_id)["attempts"] == 1 + sum(kill.job_id == job_id for kill in kills)
    write_results(stack, kills, elapsed)


def write_results(stack: Stack, kills: list[Kill], elapsed: float) -> None:
    folder = os.environ.get(RESULTS_ENV)
    if not folder:
        return
    from benchmarks.common import machine_description

    machine = machine_description()
    settings = stack.settings
    result = {
        "jobs": JOBS,
        "kills": len(kills),
        "workers": 2,
        "steps_per_job": STEPS,
        "checkpoint_every_steps": settings.checkpoint_every_steps,
        "heartbeat_stale_seconds": settings.heartbeat_stale_seconds,
        "stale_sweep_interval_seconds": settings.stale_sweep_interval_seconds,
        "total_seconds": round(elapsed, 1),
        "takeover_seconds_max": max(kill.takeover_seconds for kill in kills),
        "recovery_seconds_max": max(kill.recovery_seconds for kill in kills),
        "per_kill": [asdict(kill) for kill in kills],
        "machine": machine,
        "load": os.getloadavg(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
    }
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fault_injection.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(
        f"| {index} | {kill.job_id} | {kill.step_at_kill} | {kill.checkpoint_step} "
        f"| {kill.resumed_from_step} | {kill.takeover_seconds:.1f} | {kill.recovery_seconds:.1f} |"
        for index, kill in enumerate(kills, 1)
    )
    (out / "fault_injection.md").write_text(f"""# Fault injection: workers SIGKILLed mid-job

Command: `python -m benchmarks.fault_injection` (runs tests/e2e/test_fault_injection.py on PostgreSQL +
Redis with {RESULTS_ENV} set).

Machine: {machine["cpu"]}, {machine["cores"]} CPU cores, {machine["memory_gib"]} GiB, torch {machine["torch"]}
(1 thread per process). Other engineers were using the same 2 cores during the run (load average
{result["load"][0]:.1f}), so the times are pessimistic.

{JOBS} jobs of {STEPS} steps on 2 workers; {len(kills)} kills, each of the whole process group of the worker
holding a running job with a checkpoint; the replacement worker is started only after a survivor took the
job over. Heartbeat stale after {settings.heartbeat_stale_seconds:g} s, sweep every
{settings.stale_sweep_interval_seconds:g} s. Every job succeeded once (one adapter, one completion event);
every killed job resumed from its checkpoint. Total {elapsed:.0f} s.

Take-over: kill until another worker holds the job's lease. Recovery: kill until that worker recorded the
job's next training step (includes loading the model and the checkpoint, and waiting for the survivor to
finish the job it was running, if any).

| kill | job | step at kill | newest checkpoint | resumed from | take-over (s) | recovery (s) |
|---|---|---|---|---|---|---|
{rows}
""")
