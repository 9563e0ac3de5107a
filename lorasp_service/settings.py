"""One settings object for the API, the worker and the CLI (environment variables `LORASP_*`)."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_RESOURCE_CLASS = "default"


class ResourceClass(BaseModel):
    """What the workers of one Celery queue can hold: jobs go to the smallest class that fits them."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    memory_gib: float = Field(gt=0)  # usable by one job: RAM on CPU workers, GPU memory on CUDA ones
    device: Literal["cpu", "cuda"] = "cpu"
    gpu_type: str | None = None  # informational ("H100"), shown in errors


class TenantRateLimits(BaseModel):
    """One tenant's own limits (per minute), overriding the deployment's; None keeps its default."""

    model_config = ConfigDict(extra="forbid")
    rpm: int | None = Field(default=None, ge=0)  # 0 = unlimited for this tenant
    tpm: int | None = Field(default=None, ge=0)


def _host_memory_gib() -> float:
    """This machine's physical memory: the capacity of the implicit class when none is configured."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORASP_", env_file=".env", extra="ignore")

    # Everything the embedded default writes lives under home: SQLite DB, broker folder, blobs.
    home: Path = Path("var")
    database_url: str = ""  # default: sqlite:///<home>/lorasp.db
    broker_url: str = ""  # default: filesystem:// (a broker that needs no server)
    storage_dir: Path | None = None  # default: <home>/storage
    model_cache_dir: Path | None = None  # default: $LORASP_MODEL_CACHE or ~/.cache/lorasp/models

    host: str = "127.0.0.1"
    port: int = 8000

    max_upload_bytes: int = 512 * 1024 * 1024
    # Base models offered by GET /v1/models; None = the whole catalog.
    enabled_models: list[str] | None = None
    # Off: a `hf:ORG/REPO` base-model source is refused (nothing is downloaded from a model hub).
    allow_hub_downloads: bool = False
    # Embedded default: a key created at first start and printed (None in production).
    default_tenant: str = "default"

    # Jobs
    job_time_limit_seconds: int = 6 * 3600
    checkpoint_every_steps: int = 50
    max_example_tokens: int = 2048
    # Data-parallel ranks one job may ask for (`processes`): each is a process holding the whole model,
    # on CUDA one GPU each. Default: this machine's cores; set it to the GPU count on GPU workers.
    max_processes: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    # How long a rank waits in a collective for the others before the job fails (a dead rank usually
    # fails the others at once; this bounds a hung one).
    distributed_timeout_seconds: float = Field(default=600.0, gt=0)
    # Queue and worker (Celery). A dedicated queue name lets test sessions share one Redis.
    queue_name: str = "lorasp"
    worker_concurrency: int = 1
    # Resource classes (JSON list of ResourceClass); none: one "default" class with this host's memory.
    # Class "default" uses queue_name itself; class C uses "<queue_name>.C".
    resource_classes: list[ResourceClass] = Field(default_factory=list)
    # The classes a `lorasp worker` consumes, comma-separated (empty: "default").
    worker_queues: str = ""
    # Lease of a running job: refreshed every heartbeat interval; a redelivered task takes a job over
    # only once its heartbeat is older than the stale threshold (its worker died).
    heartbeat_interval_seconds: float = 5.0
    heartbeat_stale_seconds: float = 60.0
    max_job_attempts: int = 3
    # None: job_time_limit_seconds + 1 h. Only tests that simulate a dead worker set it lower.
    broker_visibility_timeout_seconds: int | None = None
    # Prefix of every Redis key the broker uses: isolates deployments (or test sessions) sharing a Redis db.
    broker_key_prefix: str = ""

    # Serving (adapter cache)
    serving_max_adapters: int = 8
    serving_max_adapter_bytes: int | None = None
    serving_max_rank: int = 64
    # Generation requests arriving within this window are decoded as one batch (up to max_batch_size).
    serving_batch_window_ms: float = 5.0
    # Rows of one decode batch (static), or of a base model's running batch (continuous).
    serving_max_batch_size: int = 32
    # "continuous": requests join the running decode batch at a step boundary and leave as they finish
    # (vLLM's scheduling); "static": a window's requests decode together to the end (benchmarks compare).
    serving_batching: Literal["continuous", "static"] = "continuous"
    # Continuous: KV-cache bytes one base model's running batch may reach, counted for every row running
    # to max_tokens (None: no bound besides the rows). A request that alone needs more is a 400.
    serving_max_kv_cache_bytes: int | None = None
    # Requests waiting to join a batch; past it a request is refused with 503 + Retry-After (None: no bound).
    serving_max_waiting_requests: int | None = 256
    # POST /v1/adapters: cap on the unpacked size of an uploaded archive (zip/tar bomb guard).
    max_adapter_unpacked_bytes: int = 1024 * 1024 * 1024

    # Files (uploads and blob hygiene)
    # Longest line a dataset may have; None: max_example_tokens * 32 bytes, at least 1 MiB (see
    # max_line_bytes_limit). Longer lines are refused while the upload streams, never held whole.
    max_line_bytes: int | None = None
    # Blobs with no database row (left by a killed API or worker) are deleted once older than this,
    # at API start and every orphan_sweep_interval_seconds (0 disables the periodic sweep).
    orphan_grace_seconds: float = 3600.0
    orphan_sweep_interval_seconds: float = 600.0
    # Serving against hostile tenants (issue 12). Per-tenant adapter quotas, so one tenant cannot take
    # every slot: at its resident quota a tenant's own LRU adapter is evicted first.
    serving_max_pinned_per_tenant: int = 2
    serving_max_resident_per_tenant: int = 4
    # Budget of one chat-template render (an adapter's template is tenant code): wall time, and the
    # characters of its output or of any string it builds. The engine refuses values that are not positive.
    chat_template_timeout_ms: float = 200.0
    chat_template_max_chars: int = 262_144
    # Webhooks: one delivery attempt waits at most timeout seconds; a failed attempt (5xx, 408, 429,
    # timeout, connection error) is retried after base * 2**(attempt-1) seconds, capped, up to max attempts.
    webhook_timeout_seconds: float = 10.0
    webhook_max_attempts: int = 8
    webhook_retry_base_seconds: float = 1.0
    webhook_retry_max_delay_seconds: float = 600.0
    # Off: a webhook URL resolving to a loopback, private, link-local, ... address is refused (SSRF).
    webhook_allow_private_networks: bool = False
    # Recovery and checkpoints (issue 12). Every worker re-enqueues running jobs whose heartbeat is
    # stale this often (seconds), so a surviving worker takes over a dead worker's job; None means
    # heartbeat_stale_seconds / 4.
    stale_job_sweep_seconds: float | None = Field(default=None, gt=0)
    # Resume checkpoints kept per job while it runs (the newest ones); all are deleted once it succeeds.
    checkpoints_kept: int = Field(default=2, ge=1)
    # Weights & Biases, for jobs with a `wandb` integration (`pip install lorasp[wandb]`). The key is the
    # deployment's, never logged nor echoed; "offline" writes runs only under wandb_dir (`wandb sync`).
    wandb_api_key: SecretStr | None = None
    wandb_mode: Literal["online", "offline"] = "online"
    wandb_dir: Path | None = None  # default: <home>/wandb

    # Rate limits per tenant (issue 11): requests and tokens (prompt estimate + max_tokens) per minute;
    # 0 = unlimited. Counted in Redis when rate_limit_storage_url is a redis:// URL (default: the
    # broker's, so every API process shares them), else in this process (the embedded default).
    rate_limit_rpm: int = Field(default=0, ge=0)
    rate_limit_tpm: int = Field(default=0, ge=0)
    rate_limit_storage_url: str = Field(default="", pattern=r"^(|redis://.*|rediss://.*|memory://)$")
    # ("": broker_url when it is Redis, else memory://)
    # Per-tenant overrides by tenant name (the name `lorasp admin create-key --tenant` takes), e.g.
    # LORASP_RATE_LIMIT_TENANTS='{"acme": {"rpm": 600, "tpm": 200000}, "batch": {"rpm": 0}}'.
    rate_limit_tenants: dict[str, TenantRateLimits] = Field(default_factory=dict)
    # GET /metrics (Prometheus text format). Off by default: it is unauthenticated, so expose it only
    # where the scraper is (its figures name base models and adapter ids, never keys or tenants).
    metrics_enabled: bool = False

    # Inference tier (issue 11): `lorasp inference` processes the API routes generation, classification
    # and adapter calls to (JSON list of base URLs). Empty: the API runs the serving engine itself (the
    # embedded default). With URLs the API holds no model; the processes read adapters from the same
    # database and storage. Their internal API is authenticated by inference_secret (same on both sides).
    # A JSON list or comma-separated.
    inference_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    inference_secret: SecretStr | None = None
    # `lorasp inference` binds here unless --host / --port say otherwise.
    inference_host: str = "127.0.0.1"
    inference_port: int = 8100
    # The router probes every process this often; one that failed is skipped for the backoff first.
    inference_health_interval_seconds: float = Field(default=2.0, ge=0)
    inference_retry_backoff_seconds: float = Field(default=1.0, ge=0)
    inference_connect_timeout_seconds: float = Field(default=2.0, gt=0)
    inference_read_timeout_seconds: float = Field(default=300.0, gt=0)

    @field_validator("inference_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            return (
                json.loads(text)
                if text.startswith("[")
                else [u.strip() for u in text.split(",") if u.strip()]
            )
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.home = self.home.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.home / 'lorasp.db').as_posix()}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if self.storage_dir is None:
            self.storage_dir = self.home / "storage"
        if self.wandb_dir is None:
            self.wandb_dir = self.home / "wandb"
        if self.inference_urls and not (self.inference_secret and self.inference_secret.get_secret_value()):
            raise ValueError("inference_secret must be set when inference_urls is (LORASP_INFERENCE_SECRET)")
        return self

    @property
    def classes(self) -> list[ResourceClass]:
        """The configured resource classes, smallest first (the implicit "default" when none are)."""
        if not self.resource_classes:
            return [ResourceClass(name=DEFAULT_RESOURCE_CLASS, memory_gib=_host_memory_gib())]
        return sorted(self.resource_classes, key=lambda c: (c.memory_gib, c.name))

    @property
    def worker_classes(self) -> list[str]:
        names = [name.strip() for name in self.worker_queues.split(",") if name.strip()]
        return names or [DEFAULT_RESOURCE_CLASS]

    @property
    def blob_dir(self) -> Path:
        assert self.storage_dir is not None
        return self.storage_dir

    @property
    def broker_dir(self) -> Path:
        """Folder of the filesystem broker used by the embedded default."""
        return self.home / "broker"

    @property
    def embedded(self) -> bool:
        """True when running without servers: filesystem broker (and usually SQLite)."""
        return self.broker_url.startswith("filesystem://")

    @property
    def rate_limit_storage(self) -> str:
        """Where rate-limit counters live: a redis:// URL (shared) or "memory://" (this process)."""
        if self.rate_limit_storage_url:
            return self.rate_limit_storage_url
        return self.broker_url if self.broker_url.startswith(("redis://", "rediss://")) else "memory://"

    @property
    def max_line_bytes_limit(self) -> int:
        # A token is rarely more than a few bytes of JSON, even escaped (\uXXXX is 6); 32 per token plus
        # a floor for the JSON around short examples keeps every example that fits its token limit.
        if self.max_line_bytes is not None:
            return self.max_line_bytes
        return max(self.max_example_tokens * 32, 1024 * 1024)

    @property
    def stale_sweep_interval_seconds(self) -> float:
        if self.stale_job_sweep_seconds is not None:
            return self.stale_job_sweep_seconds
        return self.heartbeat_stale_seconds / 4

    @property
    def visibility_timeout_seconds(self) -> int:
        # Longer than the longest job, so a long job's unacked message is not redelivered mid-run.
        if self.broker_visibility_timeout_seconds is not None:
            return self.broker_visibility_timeout_seconds
        return self.job_time_limit_seconds + 3600


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
