"""ORM models of the registry: tenants, API keys, files, jobs, events, checkpoints, adapters.

Public ids carry OpenAI-style prefixes (`file-…`, `ftjob-…`, `ftevent-…`, `ftckpt-…`); events and
checkpoints also have an integer `seq` so that paging has a total order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # sha256 of the key; the key itself is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # Admin keys may also manage the deployment (/v1/admin/...); a tenant key never can.
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    tenant: Mapped[Tenant] = relationship()


class File(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(512), unique=True)
    status: Mapped[str] = mapped_column(String(32), default="processed")
    # What validation found: format, examples, tokens, label counts.
    data_format: Mapped[str | None] = mapped_column(String(32), default=None)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class Job(Base):
    __tablename__ = "fine_tuning_jobs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(256))
    training_file_id: Mapped[str] = mapped_column(ForeignKey("files.id"))
    validation_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"), default=None)
    status: Mapped[str] = mapped_column(String(32), index=True)
    # Resolved training spec: {"hyperparameters": {...}, "method": {...}} as accepted by the API.
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    method: Mapped[dict[str, Any]] = mapped_column(default=dict)
    suffix: Mapped[str | None] = mapped_column(String(64), default=None)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256), default=None)
    # Continued training: the fine-tuned model or checkpoint id the job starts from (`model` stays its
    # base model, which is what the worker loads).
    parent_model: Mapped[str | None] = mapped_column(String(256), default=None)
    # Ids of the `fine-tune-results` files the finished job wrote (its step_metrics.csv).
    result_files: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # OpenAI's `integrations` as accepted (a W&B run the worker logs to); None: no integration.
    integrations: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # A pause asked of a running job: its worker checkpoints, stops and moves it to paused.
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Admission (issue 10): the resource class whose queue runs the job (None: "default") and the peak
    # memory estimated at creation, in bytes.
    resource_class: Mapped[str | None] = mapped_column(String(64), default=None)
    estimated_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Claims that followed a user's resume: `attempts - resumes` is what the worker-loss limit counts.
    resumes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Lease of the worker running the job: a redelivered message takes the job over only once the
    # heartbeat is stale (its worker died); otherwise it is a no-op.
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    estimated_finish: Mapped[datetime | None] = mapped_column(default=None)
    __table_args__ = (Index("ix_jobs_tenant_created", "tenant_id", "created_at"),)


class JobEvent(Base):
    __tablename__ = "fine_tuning_job_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")  # "message" | "metrics"
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index("ix_events_job_seq", "job_id", "seq"),)


class Checkpoint(Base):
    __tablename__ = "fine_tuning_checkpoints"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(512))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_checkpoint_job_step"),)


class Adapter(Base):
    """A fine-tuned model: its id is the job's `fine_tuned_model` and the `model` of inference calls."""

    __tablename__ = "adapters"
    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # Lineage: which job (None for an uploaded adapter) and which base model made it.
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("fine_tuning_jobs.id", ondelete="SET NULL"), unique=True, default=None
    )
    base_model: Mapped[str] = mapped_column(String(256))
    # How the base's linears were held when it trained ("none" | "int8" | "nf4"): served on the same
    base_quantization: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    task: Mapped[str] = mapped_column(String(16))  # "causal-lm" | "seq-cls"
    source: Mapped[str] = mapped_column(String(16), default="training")  # "training" | "upload"
    storage_key: Mapped[str] = mapped_column(String(512), unique=True)  # adapter directory
    archive_key: Mapped[str | None] = mapped_column(String(512), default=None)  # .tar.gz for download
    sha256: Mapped[str] = mapped_column(String(64))  # of the archive
    bytes: Mapped[int] = mapped_column(BigInteger)
    rank: Mapped[int] = mapped_column(Integer)
    freeze_ratio: Mapped[float] = mapped_column(default=0.0)
    target_modules: Mapped[list[Any]] = mapped_column(default=list)
    label_names: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    # A user-visible epoch checkpoint of a job (job_id stays NULL: it is unique to the final model).
    # Servable, downloadable and deletable like any adapter; its id is `<fine_tuned_model>:ckpt-step-N`.
    checkpoint_job_id: Mapped[str | None] = mapped_column(
        ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True, default=None
    )
    step: Mapped[int | None] = mapped_column(Integer, default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BaseModelRecord(Base):
    """A base model this deployment can fine-tune and serve: its `name` is the `model` clients send.

    Catalog models are rows too (`source_kind` "catalog", loaded by name); a registered model's files
    live in the model store at `store_key` (`models/<sha256>`), the bytes every process loads.
    """

    __tablename__ = "base_models"
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))  # as registered: catalog name, path, gguf:/hf: ref
    source_kind: Mapped[str] = mapped_column(String(16))  # "catalog" | "directory" | "gguf" | "hub"
    task: Mapped[str] = mapped_column(String(16))  # "causal-lm" | "seq-cls"
    description: Mapped[str] = mapped_column(String(512), default="")
    architecture: Mapped[str | None] = mapped_column(String(128), default=None)
    parameter_count: Mapped[int | None] = mapped_column(BigInteger, default=None)
    bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    dtype: Mapped[str] = mapped_column(String(16), default="float32")
    max_length: Mapped[int | None] = mapped_column(Integer, default=None)
    chat_template: Mapped[str | None] = mapped_column(Text, default=None)  # override of the tokenizer's
    target_modules: Mapped[list[Any] | None] = mapped_column(JSON, default=None)  # default for jobs
    label_names: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    status: Mapped[str] = mapped_column(String(16), default="ready")  # ready | downloading | failed
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)  # of the stored files
    store_key: Mapped[str | None] = mapped_column(String(512), default=None)
    # NULL: offered to the whole deployment; else a private model of that tenant.
    owner_tenant_id: Mapped[str | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True, default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
