"""sweep_orphans against real rows: which blobs go (no row, old enough) and which stay (a row, a live job,
too young, an unknown kind)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from lorasp_service.blob_sweep import sweep_orphans
from lorasp_service.ids import new_id
from lorasp_service.orm import Adapter, Checkpoint, File, Job
from lorasp_service.storage import BlobStorage

GRACE = 600.0


def _blob(root: Path, key: str, *, old: bool = True) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"blob")
    if old:
        stamp = time.time() - 2 * GRACE
        for touched in (path, path.parent):
            os.utime(touched, (stamp, stamp))


def test_sweep_removes_only_old_blobs_without_rows(
    tmp_path: Path, db: Session, db_engine: sa.Engine, make_tenant: Callable[[], dict[str, str]]
) -> None:
    tenant = make_tenant()["X-Tenant-Id"]
    storage = BlobStorage(tmp_path / "storage")
    root = storage.root

    def file_row(key: str, *, deleted: bool = False) -> File:
        row = File(
            id=new_id("file"),
            tenant_id=tenant,
            filename="t.jsonl",
            purpose="fine-tune",
            bytes=4,
            sha256="0" * 64,
            storage_key=key,
            deleted_at=datetime.now(UTC) if deleted else None,
        )
        db.add(row)
        db.flush()
        return row

    live = file_row(f"files/{tenant}/{new_id('file')}.jsonl")
    gone = file_row(f"files/{tenant}/{new_id('file')}.jsonl", deleted=True)
    running = Job(
        id=new_id("ftjob"),
        tenant_id=tenant,
        model="tiny-random-llama",
        training_file_id=live.id,
        status="running",
    )
    finished = Job(
        id=new_id("ftjob"),
        tenant_id=tenant,
        model="tiny-random-llama",
        training_file_id=live.id,
        status="succeeded",
    )
    db.add_all([running, finished])
    db.flush()
    kept_checkpoint = f"jobs/{finished.id}/checkpoints/step-5"
    db.add(Checkpoint(id=new_id("ftckpt"), job_id=finished.id, step=5, storage_key=kept_checkpoint))
    adapter_key = f"adapters/{finished.id}"
    db.add(
        Adapter(
            id=f"ft:tiny-random-llama:sweep:{new_id('x')}",
            tenant_id=tenant,
            job_id=finished.id,
            base_model="tiny-random-llama",
            task="causal-lm",
            storage_key=adapter_key,
            archive_key=adapter_key + ".tar.gz",
            sha256="0" * 64,
            bytes=4,
            rank=4,
        )
    )
    db.commit()

    keep = [
        live.storage_key,
        f"{kept_checkpoint}/trainer_state.pt",
        f"{adapter_key}/adapter_model.safetensors",
        f"{adapter_key}.tar.gz",
        f"adapters/{running.id}/adapter_model.safetensors",  # written just before its row
        f"jobs/{running.id}/checkpoints/step-3/trainer_state.pt",  # a live job's checkpoint
        "unknown-kind/old.bin",
    ]
    orphans = {
        gone.storage_key: gone.storage_key,
        f"files/{tenant}/file-norow.jsonl": f"files/{tenant}/file-norow.jsonl",
        ".tmp/tmpkilled": ".tmp/tmpkilled",
        "adapters/ftjob-never/adapter_model.safetensors": "adapters/ftjob-never",
        "adapters/ftjob-never.tar.gz": "adapters/ftjob-never.tar.gz",
        f"jobs/{finished.id}/checkpoints/step-6/trainer_state.pt": f"jobs/{finished.id}/checkpoints/step-6",
        "jobs/ftjob-gone/checkpoints/step-1/trainer_state.pt": "jobs/ftjob-gone/checkpoints/step-1",
    }
    young = [f"files/{tenant}/file-uploading.jsonl", ".tmp/tmpwriting"]
    for key in keep + list(orphans):
        _blob(root, key)
    for key in young:
        _blob(root, key, old=False)

    removed = sweep_orphans(sessionmaker(bind=db_engine), storage, GRACE)

    assert removed == sorted(set(orphans.values()))
    for key in keep + young:
        assert (root / key).is_file(), key
    for key in orphans:
        assert not (root / key).exists(), key
    assert not (root / "jobs" / "ftjob-gone").exists()  # a dead job's emptied folder goes too
    assert sweep_orphans(sessionmaker(bind=db_engine), storage, GRACE) == []
