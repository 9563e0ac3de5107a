"""Shapes of the adapter serving endpoints: load / unload / loaded list (hot-loaded adapter objects)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, StrictBool

from lorasp_core.quantization import parse_resident_name
from lorasp_core.serving import AdapterInfo
from lorasp_core.train_config import BaseQuantization


class LoadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # True pins the adapter (never evicted); false unpins it; absent leaves the pin as it is.
    pin: StrictBool | None = None


class LoadedAdapter(BaseModel):
    """A resident adapter with its serving metrics (times are unix seconds, latencies milliseconds)."""

    id: str
    object: Literal["adapter"] = "adapter"
    base_model: str
    base_quantization: BaseQuantization = "none"  # how the resident base it runs on is held
    task: str
    rank: int
    bytes: int
    pinned: bool
    hits: int
    loads: int
    last_used_at: int
    loaded_at: int
    load_ms: float
    requests: int
    tokens_generated: int
    mean_latency_ms: float | None
    label_names: list[str] | None = None

    @classmethod
    def from_info(cls, info: AdapterInfo) -> LoadedAdapter:
        base_model, base_quantization = parse_resident_name(info.base_model)
        return cls(
            id=info.adapter_id,
            base_model=base_model,
            base_quantization=base_quantization,
            task=info.task,
            rank=info.rank,
            bytes=info.bytes,
            pinned=info.pinned,
            hits=info.hits,
            loads=info.loads,
            last_used_at=int(info.last_used),
            loaded_at=int(info.loaded_at),
            load_ms=round(info.load_ms, 3),
            requests=info.requests,
            tokens_generated=info.tokens_generated,
            mean_latency_ms=None if info.mean_latency_ms is None else round(info.mean_latency_ms, 3),
            label_names=None if info.label_names is None else list(info.label_names),
        )


class LoadedAdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[LoadedAdapter]


class AdapterUnloaded(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    # False: the adapter is the tenant's but was not resident (nothing to free); still a 200.
    unloaded: bool
