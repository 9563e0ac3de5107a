"""Sweep orphaned blobs: storage entries that no database row refers to, left by a killed process.

A SIGKILLed API leaves temp files in `.tmp` (an upload being written) and committed uploads under
`files/` whose row was never inserted (killed while validating); a killed worker can leave an adapter
or checkpoint copy whose row it never wrote. Each kind of blob is kept while a row refers to it:

| key | kept while |
|---|---|
| `.tmp/*` | never referenced: only its age protects a write in progress |
| `files/<tenant>/<name>` | a `files` row that is not deleted has this `storage_key` |
| `adapters/<name>[.tar.gz]` | an `adapters` row has it as key, or `<job>[-ckpt-step-N]` is unfinished |
| `jobs/<job>/checkpoints/step-<n>` | a checkpoint row has this key, or the job is unfinished |

(A job's worker writes its adapter just before the row, hence the unfinished-job exception.)
Only entries older than the grace period (by mtime) are candidates, so a blob whose row is about to be
committed is never taken. Anything else in storage (unknown top-level folders) is left alone.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lorasp_service.jobs.status import ACTIVE_STATUSES
from lorasp_service.orm import Adapter, Checkpoint, File, Job
from lorasp_service.storage import BlobStorage

log = logging.getLogger(__name__)

ARCHIVE_SUFFIX = ".tar.gz"


def _older_than(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_mtime < cutoff
    except FileNotFoundError:  # removed meanwhile (a DELETE, another sweeper)
        return False


def _children(folder: Path) -> Iterator[Path]:
    if folder.is_dir() and not folder.is_symlink():
        yield from sorted(folder.iterdir())


# Folders that only group blobs (never a blob themselves): a tenant's uploads, a job's checkpoints.
_CONTAINER_DEPTHS = {"files": {1}, "jobs": {1, 2}, "adapters": set(), ".tmp": set()}


def _ancestors(keys: set[str]) -> set[str]:
    """Every folder key above a referenced key: such a folder holds live blobs and is walked into."""
    folders: set[str] = set()
    for key in keys:
        parts = key.split("/")
        folders.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    return folders


def _candidates(root: Path, cutoff: float, referenced: set[str]) -> Iterator[tuple[str, Path]]:
    """(key, path) of every unreferenced entry of a known kind that is older than the cutoff; folders
    that group blobs or hold referenced ones are walked into, never taken whole."""
    folders = _ancestors(referenced)

    def walk(kind: str, folder: Path, prefix: str, depth: int) -> Iterator[tuple[str, Path]]:
        for path in _children(folder):
            key = f"{prefix}/{path.name}"
            if key in referenced:
                continue
            if path.is_dir() and (key in folders or depth in _CONTAINER_DEPTHS[kind]):
                yield from walk(kind, path, key, depth + 1)
            elif _older_than(path, cutoff):
                yield key, path

    for kind in _CONTAINER_DEPTHS:
        yield from walk(kind, root / kind, kind, 1)


def _referenced(session: Session) -> tuple[set[str], set[str]]:
    """(keys some row refers to, ids of unfinished jobs)."""
    keys: set[str] = set(session.scalars(select(File.storage_key).where(File.deleted_at.is_(None))))
    for storage_key, archive_key in session.execute(select(Adapter.storage_key, Adapter.archive_key)):
        keys.add(storage_key)
        if archive_key:
            keys.add(archive_key)
    keys.update(session.scalars(select(Checkpoint.storage_key)))
    active = set(session.scalars(select(Job.id).where(Job.status.in_(ACTIVE_STATUSES))))
    return {key.rstrip("/") for key in keys}, active


def _is_orphan(key: str, active_jobs: set[str]) -> bool:
    """An unreferenced key is an orphan unless an unfinished job is about to register it."""
    kind, _, rest = key.partition("/")
    if kind == "adapters":
        # `<job>-ckpt-step-N`: an epoch checkpoint model, copied in just before its row is committed.
        return rest.removesuffix(ARCHIVE_SUFFIX).split("-ckpt-step-")[0] not in active_jobs
    if kind == "jobs":
        return rest.split("/")[0] not in active_jobs
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_empty_job_folder(job_dir: Path) -> None:
    # Only a finished job's folder gets here (its checkpoints were orphans), so no worker is about to
    # write into it; rmdir refuses a folder that still holds a checkpoint with a row.
    for folder in (job_dir / "checkpoints", job_dir):
        try:
            folder.rmdir()
        except OSError:
            return


def sweep_orphans(sessions: sessionmaker[Session], storage: BlobStorage, grace_seconds: float) -> list[str]:
    """Delete orphaned blobs older than `grace_seconds`; returns their keys (sorted)."""
    # The cutoff is taken before the rows are read: every writer commits a blob's row within the grace
    # period of writing the blob, so a blob older than the cutoff has its row (if any) in this query.
    cutoff = time.time() - grace_seconds
    with sessions() as session:
        referenced, active_jobs = _referenced(session)
    removed: list[str] = []
    for key, path in _candidates(storage.root, cutoff, referenced):
        if _is_orphan(key, active_jobs):
            _remove(path)
            removed.append(key)
            if key.startswith("jobs/"):
                _remove_empty_job_folder(path.parent.parent)
    if removed:
        log.info("removed %d orphaned blob(s): %s", len(removed), ", ".join(sorted(removed)))
    return sorted(removed)
