"""Admin API shapes: a registered base model as operators see it, and the registration request."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import unix_seconds_required
from lorasp_service.orm import BaseModelRecord


class RegisterBaseModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The `model` clients will send")
    source: str = Field(description="A directory on the server, `gguf:FILE` or `hf:ORG/REPO[@REVISION]`")
    task: Literal["causal-lm", "seq-cls"] | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_length: int | None = Field(default=None, ge=1)
    chat_template: str | None = Field(default=None, description="Overrides the tokenizer's template")
    target_modules: list[str] | None = None
    tenant: str | None = Field(default=None, description="Tenant name: a model private to that tenant")


class BaseModelAdminObject(BaseModel):
    object: Literal["base_model"] = "base_model"
    name: str
    source: str
    source_kind: str
    task: str
    description: str
    architecture: str | None
    parameter_count: int | None
    bytes: int | None
    dtype: str
    max_length: int | None
    chat_template_override: bool
    target_modules: list[str] | None
    label_names: list[str] | None
    status: str
    status_reason: str | None
    bytes_done: int
    sha256: str | None
    owner_tenant_id: str | None
    created_at: int

    @classmethod
    def of(cls, row: BaseModelRecord) -> BaseModelAdminObject:
        return cls(
            name=row.name,
            source=row.source,
            source_kind=row.source_kind,
            task=row.task,
            description=row.description,
            architecture=row.architecture,
            parameter_count=row.parameter_count,
            bytes=row.bytes,
            dtype=row.dtype,
            max_length=row.max_length,
            chat_template_override=row.chat_template is not None,
            target_modules=None if row.target_modules is None else [str(n) for n in row.target_modules],
            label_names=None if row.label_names is None else [str(n) for n in row.label_names],
            status=row.status,
            status_reason=row.status_reason,
            bytes_done=row.bytes_done,
            sha256=row.sha256,
            owner_tenant_id=row.owner_tenant_id,
            created_at=unix_seconds_required(row.created_at),
        )


class BaseModelAdminList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BaseModelAdminObject]


class BaseModelRemoved(BaseModel):
    name: str
    object: Literal["base_model"] = "base_model"
    deleted: bool = True
