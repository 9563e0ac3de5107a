"""The ranks of a data-parallel job (`processes` > 1): rank 0 is the worker process itself, ranks
1..N-1 are child processes it starts and supervises.

Why this launch: a Celery prefork child is a daemonic `multiprocessing` process, which may not start
`multiprocessing` children (so neither `torch.multiprocessing.spawn` nor torchrun's function launcher
work there), but it may run `subprocess`es. Rank 0 staying in the worker keeps everything that talks
to the database (progress, heartbeat, lease, cancel, checkpoints, the adapter) where it already is;
the other ranks only train (`lorasp_service.training_rank`) and read the job's inputs as rank 0 does.

They rendezvous through a `torch.distributed.TCPStore` that rank 0 serves on a port the OS picks (no
port is guessed), then form a gloo (CPU) or nccl (CUDA) group (`lorasp_core.distributed.init_rank`).
A rank that dies breaks the group's connections, so the others fail at their next collective (at the
latest after `distributed_timeout_seconds`) and the job fails like any training error; leaving,
rank 0 waits for its children briefly and kills any that remain, so no rank outlives its job.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch._C._distributed_c10d import TCPStore  # torch.distributed re-exports it untyped

from lorasp_core.distributed import init_rank
from lorasp_service.settings import Settings

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # every rank of a job runs on the worker's machine
# How long rank 0 waits for its children to exit after training before it kills them.
EXIT_GRACE_SECONDS = 30.0
RANK_MODULE = "lorasp_service.training_rank"
READY_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class RankRequest:
    """What a child rank is started with (a JSON file only its owner can read: settings hold secrets)."""

    job_id: str
    attempt: int
    resume_key: str | None
    rank: int
    world_size: int
    port: int
    settings: dict[str, Any]

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(asdict(self), file)

    @classmethod
    def read(cls, path: Path) -> RankRequest:
        return cls(**json.loads(path.read_text()))


def settings_values(settings: Settings) -> dict[str, Any]:
    """The worker's settings as JSON values (secrets revealed: the child must see what the worker sees)."""
    values = settings.model_dump(mode="json")
    if settings.wandb_api_key is not None:
        values["wandb_api_key"] = settings.wandb_api_key.get_secret_value()
    return values


class RankStartError(RuntimeError):
    """A child rank exited (or never got ready) before training started."""


def ready_key(rank: int) -> str:
    return f"lorasp/ready/{rank}"


def wait_until_ready(store: TCPStore, children: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait until every child has loaded its inputs (it sets `ready_key` before joining the group).

    Why: a child that fails while loading would otherwise leave rank 0 in the group's rendezvous
    until the collective timeout; polling the children here fails the job as soon as one exits."""
    deadline = time.monotonic() + timeout
    waiting = {rank: child for rank, child in enumerate(children, start=1)}
    while waiting:
        for rank, child in list(waiting.items()):
            if store.check([ready_key(rank)]):
                del waiting[rank]
            elif child.poll() is not None:
                raise RankStartError(f"rank {rank} exited with status {child.returncode} before training")
        if waiting and time.monotonic() > deadline:
            raise RankStartError(f"ranks {sorted(waiting)} were not ready after {timeout:.0f} s")
        time.sleep(READY_POLL_SECONDS)


def stop_children(children: list[subprocess.Popen[bytes]], kill: bool) -> None:
    """Reap every child rank: killed at once when rank 0 failed (they would wait for it), else given
    EXIT_GRACE_SECONDS to finish and killed after that."""
    for child in children:
        if kill and child.poll() is None:
            child.kill()
    for child in children:
        try:
            child.wait(timeout=EXIT_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            log.warning("rank process %d did not exit after training; killing it", child.pid)
            child.kill()
            child.wait()
        if child.returncode != 0 and not kill:
            log.warning("rank process %d exited with status %s", child.pid, child.returncode)


@contextmanager
def data_parallel_ranks(
    settings: Settings,
    job_id: str,
    attempt: int,
    resume_key: str | None,
    processes: int,
    work_dir: Path,
    device: torch.device,
) -> Iterator[None]:
    """Inside, this process is rank 0 of the job's `processes` ranks (nothing happens for 1): ranks
    1..N-1 are started as children, and on exit the group is destroyed and the children are gone."""
    if processes == 1:
        yield
        return
    store = TCPStore(HOST, 0, processes, is_master=True, wait_for_workers=False)
    values = settings_values(settings)
    children: list[subprocess.Popen[bytes]] = []
    failed = True
    try:
        for rank in range(1, processes):
            request_path = work_dir / "ranks" / f"rank-{rank}.json"
            RankRequest(job_id, attempt, resume_key, rank, processes, store.port, values).write(request_path)
            command = [sys.executable, "-m", RANK_MODULE, str(request_path), "--job", job_id]
            children.append(subprocess.Popen(command))  # noqa: S603 - our own interpreter and module
        wait_until_ready(store, children, settings.distributed_timeout_seconds)
        with init_rank(0, processes, store, device, settings.distributed_timeout_seconds):
            yield
        failed = False
    finally:
        stop_children(children, kill=failed)


def live_rank_pids(job_id: str) -> list[int]:
    """The job's child ranks still alive on this machine (their command line names the rank module and
    the job; zombies are dead): what an operator, or a test, checks after a cancel or a failure."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if RANK_MODULE.encode() in command and job_id.encode() in command and state != "Z":
            pids.append(int(entry.name))
    return pids
