"""Continued training on the worker: the adapter a job starts from (`Job.parent_model`) and its weights.

The API gave the job its parent's LoRA-SP structure (rank, target modules, freeze ratio, mask seed), so
the model the worker wraps has the parent's masks; `load_adapter` checks that and overwrites every
entry, frozen ones included, with the parent's values. A resumed claim skips the load: its resume
checkpoint already holds the weights, trained further.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session
from torch import nn

from lorasp_core import load_adapter, read_adapter_metadata
from lorasp_service import registry
from lorasp_service.orm import Job
from lorasp_service.storage import BlobStorage


class ParentUnavailableError(Exception):
    """The model the job continues from is gone (deleted) or its files cannot be loaded."""


@dataclass(frozen=True)
class ParentAdapter:
    model_id: str
    directory: Path
    # A seq-cls parent's labels, in the order of its head's rows (the child's head keeps that order).
    label_names: list[str] | None


def find_parent(session: Session, storage: BlobStorage, job: Job) -> ParentAdapter | None:
    """The job's parent adapter (None for a job from a base model); ParentUnavailableError if deleted."""
    if job.parent_model is None:
        return None
    adapter = registry.get_adapter_for_tenant(session, job.tenant_id, job.parent_model)
    if adapter is None:
        raise ParentUnavailableError(f"the model '{job.parent_model}' this job continues from was deleted")
    directory = storage.path(adapter.storage_key)
    try:
        labels = read_adapter_metadata(directory).label_names
    except (OSError, ValueError) as error:
        raise ParentUnavailableError(f"the model '{job.parent_model}' cannot be read: {error}") from error
    return ParentAdapter(adapter.id, directory, labels if labels is not None else adapter.label_names)


def load_parent_weights(model: nn.Module, parent: ParentAdapter) -> None:
    """Overwrite the wrapped model's adapter (and seq-cls head) with the parent's weights."""
    try:
        load_adapter(model, parent.directory)
    except (OSError, ValueError) as error:
        raise ParentUnavailableError(f"cannot start from the model '{parent.model_id}': {error}") from error


def unknown_labels(labels: list[str], parent: ParentAdapter) -> list[str]:
    """Labels of the training data that the parent's head has no row for."""
    known = set(parent.label_names or [])
    return sorted({label for label in labels if label not in known})
