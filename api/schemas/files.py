"""File objects (`file-…`) as OpenAI returns them, plus what dataset validation found."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from api.schemas.common import unix_seconds_required
from lorasp_service.orm import File


class FileDatasetStats(BaseModel):
    """lorasp extension: what structural validation found at upload."""

    format: str | None
    examples: int
    label_counts: dict[str, int] = {}


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None
    sha256: str
    lorasp: FileDatasetStats

    @classmethod
    def from_row(cls, row: File) -> FileObject:
        stats = row.stats or {}
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=unix_seconds_required(row.created_at),
            filename=row.filename,
            purpose=row.purpose,
            status=row.status,
            sha256=row.sha256,
            lorasp=FileDatasetStats(
                format=row.data_format,
                examples=int(stats.get("examples", 0)),
                label_counts=dict(stats.get("label_counts") or {}),
            ),
        )


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
