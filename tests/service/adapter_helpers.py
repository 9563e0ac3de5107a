"""Adapters of the tiny models with a known LoRA-SP structure, registered as the worker registers them
(files in blob storage, an `Adapter` row): the parents of continued-training tests."""

from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy.orm import Session

from lorasp_core.config import LoraSPConfig
from lorasp_core.models.tiny import tiny_random_bert, tiny_random_llama
from lorasp_core.peft_format import read_adapter_metadata, save_adapter
from lorasp_core.wrapping import apply_lorasp
from lorasp_service.orm import Adapter
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

# Deliberately not the defaults, so an inherited value cannot pass by coincidence.
PARENT_STRUCTURE = LoraSPConfig(
    r=4, alpha=8.0, freeze_ratio=0.25, mask_seed=77, init_seed=3, target_modules=("q_proj", "v_proj")
)
PARENT_LABELS = ["neg", "pos"]


def llama_parent_dir(root: Path) -> Path:
    model = apply_lorasp(tiny_random_llama(seed=0), PARENT_STRUCTURE)
    return save_adapter(
        model, root / "llama-parent", base_model_name_or_path="tiny-random-llama", task_type="causal-lm"
    )


def bert_parent_dir(root: Path) -> Path:
    config = LoraSPConfig(r=4, alpha=8.0, freeze_ratio=0.25, mask_seed=77, init_seed=3)
    model = apply_lorasp(tiny_random_bert(num_labels=len(PARENT_LABELS), seed=0), config)
    return save_adapter(
        model,
        root / "bert-parent",
        base_model_name_or_path="tiny-random-bert",
        task_type="seq-cls",
        label_names=PARENT_LABELS,
    )


def register_adapter(
    db: Session,
    settings: Settings,
    tenant_id: str,
    directory: Path,
    *,
    adapter_id: str | None = None,
    job_id: str | None = None,
    checkpoint_job_id: str | None = None,
    step: int | None = None,
) -> Adapter:
    """Copy the adapter directory into storage and add its row (no archive: nothing here downloads it)."""
    metadata = read_adapter_metadata(directory)
    base_model = metadata.base_model_name_or_path
    assert base_model is not None
    adapter_id = adapter_id or f"ft:{base_model}:parent:{secrets.token_hex(4)}"
    key = f"adapters/{tenant_id}/{adapter_id.replace(':', '_')}"
    BlobStorage(settings.blob_dir).put_dir(key, directory)
    targets = metadata.target_modules
    adapter = Adapter(
        id=adapter_id,
        tenant_id=tenant_id,
        job_id=job_id,
        checkpoint_job_id=checkpoint_job_id,
        base_model=base_model,
        task=metadata.task,
        storage_key=key,
        sha256="0" * 64,
        bytes=0,
        rank=metadata.r,
        freeze_ratio=metadata.freeze_ratio,
        target_modules=[targets] if isinstance(targets, str) else list(targets),
        label_names=metadata.label_names,
        step=step,
    )
    db.add(adapter)
    db.commit()
    return adapter
