"""A job attempt's local scratch folder (`work/<job id>-attempt-<n>` in the home) and the stale-folder sweep.

The worker removes its folder when the attempt ends, but a killed worker cannot: its folder (checkpoints
not yet copied, a saved adapter) stays on that machine's disk. `sweep_work_dirs` runs when a worker
starts and with every stale-job sweep, and removes the folders no live attempt can be using: the job is
gone or not running, or it runs as a later attempt. It lists the folders before it reads the jobs, so a
folder created meanwhile by a new claim is never seen, and it leaves any folder touched within the
stale-heartbeat period alone.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

from sqlalchemy import select

from lorasp_service.db import session_scope
from lorasp_service.jobs import JobStatus
from lorasp_service.orm import Job
from lorasp_service.settings import Settings

log = logging.getLogger(__name__)

_ATTEMPT_DIR = re.compile(r"(?P<job>.+)-attempt-(?P<attempt>[0-9]+)")


def work_root(settings: Settings) -> Path:
    return settings.home / "work"


def work_dir(settings: Settings, job_id: str, attempt: int) -> Path:
    return work_root(settings) / f"{job_id}-attempt-{attempt}"


def sweep_work_dirs(settings: Settings) -> list[str]:
    """Remove stale attempt folders; returns their names."""
    root = work_root(settings)
    if not root.is_dir():
        return []
    recent = time.time() - settings.heartbeat_stale_seconds
    found: dict[str, tuple[str, int]] = {}
    for path in root.iterdir():
        match = _ATTEMPT_DIR.fullmatch(path.name)
        if match and path.is_dir() and path.stat().st_mtime < recent:
            found[path.name] = (match["job"], int(match["attempt"]))
    if not found:
        return []
    job_ids = sorted({job_id for job_id, _ in found.values()})
    with session_scope(settings) as session:
        rows = session.execute(select(Job.id, Job.status, Job.attempts).where(Job.id.in_(job_ids))).all()
    live = {job_id: attempts for job_id, status, attempts in rows if status == JobStatus.RUNNING}
    removed = []
    for name, (job_id, attempt) in sorted(found.items()):
        if live.get(job_id) == attempt:
            continue  # the running attempt: maybe a live worker's (a dead one's is taken over first)
        shutil.rmtree(root / name, ignore_errors=True)
        removed.append(name)
    if removed:
        log.info("removed %d stale job work folder(s): %s", len(removed), ", ".join(removed))
    return removed
