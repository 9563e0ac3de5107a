"""Shared read/write helpers over the registry (files, jobs, events, adapters) for the API and the worker.

Every lookup is scoped to a tenant: another tenant's id behaves exactly like an unknown id.
Helpers add/flush but never commit; the calling service owns the transaction. Blob deletions are
returned as storage keys so that the caller removes them only after its commit succeeded (the
database never points at a missing blob).

A job's spec, statuses and events belong to the job domain, `lorasp_service.jobs`.
"""

from __future__ import annotations

import re
import secrets
import string
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from lorasp_service import checkpoints
from lorasp_service.jobs.status import ACTIVE_STATUSES
from lorasp_service.orm import Adapter, File, Job, JobEvent
from lorasp_service.storage import BlobStorage

_ADAPTER_TOKEN_ALPHABET = string.ascii_letters + string.digits
MAX_ID_LENGTH = 256


def is_plausible_id(identifier: str) -> bool:
    """Printable ASCII of a sane length. Anything else (NUL bytes, lone surrogates) cannot be an id and
    must not reach the database driver, which would reject it with an error rather than "no row"."""
    return 0 < len(identifier) <= MAX_ID_LENGTH and identifier.isascii() and identifier.isprintable()


def get_file_for_tenant(session: Session, tenant_id: str, file_id: str) -> File | None:
    """A file of the tenant that has not been deleted."""
    if not is_plausible_id(file_id):
        return None
    return session.scalars(
        select(File).where(File.id == file_id, File.tenant_id == tenant_id, File.deleted_at.is_(None))
    ).one_or_none()


def get_job_for_tenant(
    session: Session, tenant_id: str, job_id: str, *, for_update: bool = False
) -> Job | None:
    """`for_update`: lock the row (SELECT ... FOR UPDATE) until the transaction ends."""
    if not is_plausible_id(job_id):
        return None
    statement = select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)
    if for_update:
        statement = statement.with_for_update()
    return session.scalars(statement).one_or_none()


def get_adapter_for_tenant(session: Session, tenant_id: str, adapter_id: str) -> Adapter | None:
    """The tenant's adapter of this id; `<fine_tuned_model>:ckpt-step-N` for a job's final step is the
    final model itself (as OpenAI lists it among the job's checkpoints)."""
    if not is_plausible_id(adapter_id):
        return None
    found = session.scalars(
        select(Adapter).where(Adapter.id == adapter_id, Adapter.tenant_id == tenant_id)
    ).one_or_none()
    final_step = FINAL_CHECKPOINT_ID.fullmatch(adapter_id)
    if found is not None or final_step is None:
        return found
    return session.scalars(
        select(Adapter).where(
            Adapter.id == final_step["model"],
            Adapter.tenant_id == tenant_id,
            Adapter.job_id.is_not(None),
            Adapter.step == int(final_step["step"]),
        )
    ).one_or_none()


FINAL_CHECKPOINT_ID = re.compile(r"(?P<model>.+):ckpt-step-(?P<step>[0-9]{1,9})")


def get_event(session: Session, job_id: str, event_id: str) -> JobEvent | None:
    if not is_plausible_id(event_id):
        return None
    return session.scalars(
        select(JobEvent).where(JobEvent.id == event_id, JobEvent.job_id == job_id)
    ).one_or_none()


def new_adapter_id(base_model: str, suffix: str | None, token: str | None = None) -> str:
    """`ft:<base model>:<suffix or "lorasp">:<token>`, the job's `fine_tuned_model`; the token defaults to
    8 random characters (a training job passes the start of its own id)."""
    token = token or "".join(secrets.choice(_ADAPTER_TOKEN_ALPHABET) for _ in range(8))
    return f"ft:{base_model}:{suffix or 'lorasp'}:{token}"


def active_jobs_using_file(session: Session, file_id: str) -> list[Job]:
    """Active jobs that still need the file (its deletion would break them)."""
    return list(
        session.scalars(
            select(Job).where(
                (Job.training_file_id == file_id) | (Job.validation_file_id == file_id),
                Job.status.in_(ACTIVE_STATUSES),
            )
        )
    )


def active_jobs_continuing_from(session: Session, adapter_ids: list[str]) -> list[Job]:
    """Active jobs whose training starts from one of these adapters (deleting it would break them)."""
    return list(
        session.scalars(select(Job).where(Job.parent_model.in_(adapter_ids), Job.status.in_(ACTIVE_STATUSES)))
    )


def soft_delete_file(session: Session, file: File) -> list[str]:
    """Mark the file deleted (jobs keep referring to its id); returns the blob keys to remove."""
    file.deleted_at = datetime.now(UTC)
    session.flush()
    return [file.storage_key]


def delete_adapter(session: Session, adapter: Adapter) -> list[str]:
    """Delete the adapter row; returns the blob keys (directory, archive) to remove after commit.

    The job that produced it keeps its `fine_tuned_model` id (as OpenAI does after a model deletion).
    """
    keys = [adapter.storage_key] + ([adapter.archive_key] if adapter.archive_key else [])
    if adapter.job_id:  # a trained adapter: its job's leftover checkpoints go with it
        keys += checkpoints.forget_job_checkpoints(session, adapter.job_id)
    session.delete(adapter)
    session.flush()
    return keys


def delete_blobs(storage: BlobStorage, keys: list[str]) -> None:
    for key in keys:
        storage.delete(key)


def ensure_adapter_archive(session: Session, storage: BlobStorage, adapter: Adapter) -> str:
    """The adapter's .tar.gz key, writing the archive (and its size/checksum) if it is missing."""
    if adapter.archive_key and storage.path(adapter.archive_key).is_file():
        return adapter.archive_key
    archive_key = adapter.archive_key or f"{adapter.storage_key.rstrip('/')}.tar.gz"
    size, digest = storage.archive_dir(adapter.storage_key, archive_key)
    adapter.archive_key, adapter.bytes, adapter.sha256 = archive_key, size, digest
    session.flush()
    return archive_key
