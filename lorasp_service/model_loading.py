"""Loading a registered base model for a job or for serving: always the model store's bytes.

A store copy is checked against the row's sha256 (once per process) and loaded in the row's dtype. The
catalog's GGUF model (SmolLM2) is dequantised into the store on its first load, like a `gguf:FILE`
registration, so the model store is the one place dequantised weights live in a deployment.
"""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path

import torch
from sqlalchemy import update

from lorasp_core.models import LoadedModel, TaskType, load_base_model
from lorasp_core.models.catalog import CATALOG, SMOLLM2_GGUF_FILE, SMOLLM2_NAME, packaged_file
from lorasp_service.base_models import CATALOG_KIND, load_source
from lorasp_service.db import session_scope
from lorasp_service.model_store import dequantise_into_staging, store_directory, verify_stored
from lorasp_service.orm import BaseModelRecord
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

# Catalog models whose packaged file is a GGUF (dequantised into the store before their first load).
CATALOG_GGUF_FILES = {SMOLLM2_NAME: SMOLLM2_GGUF_FILE}


def load_model(
    settings: Settings,
    storage: BlobStorage,
    row: BaseModelRecord,
    *,
    task: TaskType | None = None,
    num_labels: int | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Load the row's model (named by the row's name, whatever its store path) for training or serving.

    Raises StoredModelCorruptError (a ModelUnavailableError) when the store copy's bytes are not the
    registered ones, rather than loading them."""
    if row.source_kind == CATALOG_KIND and row.name in CATALOG_GGUF_FILES:
        row = store_catalog_gguf(settings, storage, row)
    source = load_source(storage, row)
    if row.store_key is not None and row.sha256 is not None:
        verify_stored(Path(source), row.sha256)
    loaded = load_base_model(
        source,
        task=task or row.task,  # type: ignore[arg-type]  # rows hold a TaskType
        num_labels=num_labels,
        cache_dir=settings.model_cache_dir,
        seed=seed,
        name=row.name,
        dtype=getattr(torch, row.dtype),  # one of model_registration.DTYPES
    )
    if row.chat_template is not None:
        loaded.tokenizer.chat_template = row.chat_template
    return loaded


def store_catalog_gguf(settings: Settings, storage: BlobStorage, row: BaseModelRecord) -> BaseModelRecord:
    """The catalog GGUF model's row with its store copy, dequantising it first if no process has.

    An exclusive file lock on the shared storage makes one process (API or worker) do it; the others
    wait, then read the row it wrote."""
    if row.store_key is not None and storage.path(row.store_key).is_dir():
        return row
    lock_path = storage.root / ".tmp" / f"catalog-{row.name}.lock"
    with open(lock_path, "a+b") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        with session_scope(settings) as session:
            current = session.get(BaseModelRecord, row.name)
            assert current is not None  # catalog rows are seeded and never removed
        if current.store_key is not None and storage.path(current.store_key).is_dir():
            return current
        gguf = packaged_file(CATALOG[row.name], CATALOG_GGUF_FILES[row.name])
        staged = dequantise_into_staging(storage, f"gguf:{gguf}", row.name)
        try:
            stored = store_directory(storage, staged)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        with session_scope(settings) as session:
            session.execute(
                update(BaseModelRecord)
                .where(BaseModelRecord.name == row.name)
                .values(store_key=stored.key, sha256=stored.sha256, bytes=stored.bytes)
            )
            session.commit()
            refreshed = session.get(BaseModelRecord, row.name)
            assert refreshed is not None
        return refreshed
