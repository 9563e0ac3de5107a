"""Public value types and errors of the serving engine (no torch logic here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from torch import nn

FinishReason = Literal["stop", "length"]

# torch.Generator.manual_seed takes any 64-bit value, signed or unsigned (negatives wrap around).
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1


class AdapterLoadError(ValueError):
    """An adapter directory cannot be served: corrupt, incomplete or incompatible with its base model.

    The message names the adapter, the offending file and the problem. The engine is unchanged.
    """

    def __init__(self, adapter_id: str, file: str, problem: str) -> None:
        self.adapter_id = adapter_id
        self.file = file
        self.problem = problem
        super().__init__(f"adapter {adapter_id!r}: {file}: {problem}")


class UnknownAdapterError(LookupError):
    """A request names an adapter the engine has never loaded (or that was unloaded)."""


class AdapterCacheFullError(RuntimeError):
    """No adapter can be evicted to make room: all resident adapters are pinned or serving requests."""


class AdapterQuotaError(AdapterCacheFullError):
    """The owner (tenant) of the adapter already has its quota of pinned or resident adapters, all of
    them pinned or serving. Only ever raised for the owner of the adapter being loaded or pinned."""

    def __init__(self, owner: str, kind: Literal["pinned", "resident"], limit: int) -> None:
        self.owner = owner
        self.kind = kind
        self.limit = limit
        super().__init__(f"owner {owner!r} already has its quota of {limit} {kind} adapters")


class ServingOverloadedError(RuntimeError):
    """The wait queue of the serving engine is full: the request was not queued. `retry_after_s` is the
    engine's estimate of when a batch row frees up (the recent mean request time, at least 1 s)."""

    def __init__(self, waiting: int, limit: int, retry_after_s: float) -> None:
        self.waiting = waiting
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(f"{waiting} generation requests are already waiting (the limit is {limit})")


BatchingMode = Literal["continuous", "static"]


@dataclass(frozen=True)
class BatchingFigures:
    """A snapshot of the generation scheduler, for metrics: rows decoding now (all base models), requests
    waiting to join, and the bytes of the KV caches of the running batches (0 under static batching,
    whose caches live only inside one batch call)."""

    mode: BatchingMode
    running_rows: int
    waiting_requests: int
    kv_cache_bytes: int


class ChatTemplateError(ValueError):
    """A chat template that cannot be rendered: it does not parse, raises, or exceeds its budget."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"chat template {problem}")


@dataclass(frozen=True)
class TemplateBudget:
    """What one chat-template render may spend: wall time, and characters of any string it builds."""

    timeout_ms: float = 200.0
    max_chars: int = 262_144

    def __post_init__(self) -> None:
        if self.timeout_ms <= 0 or self.max_chars < 1:
            raise ValueError(f"template budget must be positive, got {self}")


class BaseModelBundle(Protocol):
    """What `base_loader(name)` returns; `lorasp_core.models.LoadedModel` satisfies it structurally."""

    @property
    def name(self) -> str: ...
    @property
    def task(self) -> str: ...  # "causal-lm" | "seq-cls"
    @property
    def model(self) -> nn.Module: ...
    @property
    def tokenizer(self) -> Any: ...


@dataclass(frozen=True)
class AdapterInfo:
    """A snapshot of one resident adapter and its serving metrics (metrics survive evictions)."""

    adapter_id: str
    base_model: str
    path: str
    task: str
    rank: int
    bytes: int
    slot: int
    pinned: bool
    hits: int
    last_used: float  # time.time() of the last request or load
    loaded_at: float
    load_ms: float
    loads: int  # how many times it was (re)loaded, evictions included
    requests: int
    tokens_generated: int
    mean_latency_ms: float | None
    label_names: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class GenerationRequest:
    """One chat or completion request; `model` is the base model name, `adapter_id=None` the bare base."""

    model: str
    adapter_id: str | None = None
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = False  # keep generating to max_tokens (benchmarks), like vLLM's ignore_eos

    def validate(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("exactly one of messages and prompt must be given")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.stop is not None and any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if self.seed is not None and not MIN_SEED <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [{MIN_SEED}, {MAX_SEED}], got {self.seed}")


@dataclass(frozen=True)
class GenerationChunk:
    """A streamed piece of output. `token_count` is cumulative: the tokens generated so far."""

    text_delta: str
    token_count: int
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    token_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ClassificationResult:
    label: str
    score: float
    scores: dict[str, float]
