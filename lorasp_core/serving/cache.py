"""LRU bookkeeping of resident adapters: capacity by count and bytes, pinning, in-use protection, metrics,
and per-owner (tenant) quotas so one owner cannot take every slot: an owner at its resident quota
evicts its own least recently used adapter first, and may pin at most its pinned quota.

Pure bookkeeping (no tensors): the engine asks `plan_admission` which adapters to evict *before* it
changes anything, so a load that cannot fit fails with the engine untouched.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from lorasp_core.serving.types import AdapterCacheFullError, AdapterInfo, AdapterQuotaError


@dataclass
class AdapterStats:
    """Per-adapter serving metrics; kept across evictions so a reloaded adapter keeps its history."""

    hits: int = 0
    loads: int = 0
    requests: int = 0
    tokens_generated: int = 0
    total_latency_ms: float = 0.0
    last_used: float = 0.0

    @property
    def mean_latency_ms(self) -> float | None:
        return self.total_latency_ms / self.requests if self.requests else None


@dataclass(frozen=True)
class AdapterCacheCounters:
    """Cache-wide totals since the engine started (never forgotten with an adapter): what a metrics
    exporter reads at scrape time, so the engine needs no metrics library."""

    hits: int = 0
    loads: int = 0
    evictions: int = 0  # adapters pushed out to make room (explicit unloads and replacements not counted)


@dataclass
class CacheEntry:
    adapter_id: str
    base_model: str
    path: str
    task: str
    rank: int
    nbytes: int
    slot: int
    pinned: bool
    loaded_at: float
    load_ms: float
    label_names: tuple[str, ...] | None
    chat_template: str | None
    in_use: int = 0  # requests queued or running with this adapter: never evicted meanwhile
    owner: str | None = None  # the tenant whose quotas it counts against (None: no quota)
    unload_when_idle: bool = False  # unload_adapter() came while requests were still using it


class AdapterCache:
    def __init__(
        self,
        max_adapters: int,
        max_bytes: int | None = None,
        *,
        max_pinned_per_owner: int | None = None,
        max_resident_per_owner: int | None = None,
    ) -> None:
        if max_adapters < 1:
            raise ValueError(f"max_adapters must be >= 1, got {max_adapters}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_adapter_bytes must be > 0, got {max_bytes}")
        for name, quota in (("pinned", max_pinned_per_owner), ("resident", max_resident_per_owner)):
            if quota is not None and quota < 1:
                raise ValueError(f"max_{name}_per_owner must be >= 1, got {quota}")
        self.max_adapters = max_adapters
        self.max_bytes = max_bytes
        self.max_pinned_per_owner = max_pinned_per_owner
        self.max_resident_per_owner = max_resident_per_owner
        self.entries: OrderedDict[str, CacheEntry] = OrderedDict()  # least recently used first
        self.stats: dict[str, AdapterStats] = {}
        self.counters = AdapterCacheCounters()

    def __contains__(self, adapter_id: object) -> bool:
        return adapter_id in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, adapter_id: str) -> CacheEntry | None:
        return self.entries.get(adapter_id)

    def touch(self, adapter_id: str, *, hit: bool = True) -> CacheEntry:
        """Mark as most recently used (a cache hit unless `hit=False`)."""
        entry = self.entries[adapter_id]
        self.entries.move_to_end(adapter_id)
        stats = self.stats.setdefault(adapter_id, AdapterStats())
        stats.last_used = time.time()
        if hit:
            stats.hits += 1
            self.counters = replace(self.counters, hits=self.counters.hits + 1)
        return entry

    def check_pin(self, owner: str | None, adapter_id: str) -> None:
        """Raise AdapterQuotaError if `owner` pinning `adapter_id` would exceed its pinned quota."""
        quota = self.max_pinned_per_owner
        if owner is None or quota is None:
            return
        pinned = sum(
            1 for e in self.entries.values() if e.owner == owner and e.pinned and e.adapter_id != adapter_id
        )
        if pinned >= quota:
            raise AdapterQuotaError(owner, "pinned", quota)

    def _own_victims(self, owner: str | None, remaining: list[CacheEntry]) -> list[CacheEntry]:
        """The owner's own LRU adapters that must go so it stays within its resident quota."""
        quota = self.max_resident_per_owner
        if owner is None or quota is None:
            return []
        own = [e for e in remaining if e.owner == owner]  # least recently used first
        evictable = [e for e in own if not e.pinned and not e.in_use]
        excess = len(own) + 1 - quota
        if excess > len(evictable):
            raise AdapterQuotaError(owner, "resident", quota)
        return evictable[: max(excess, 0)]

    def plan_admission(
        self, nbytes: int, *, replacing: str | None = None, owner: str | None = None
    ) -> list[str]:
        """Adapters to evict (LRU first) so that one more of `nbytes`, owned by `owner`, fits; raises if
        impossible. The owner's own adapters go first while it is at its resident quota.

        `replacing` names an entry that the new one replaces (its room counts as free).
        """
        if self.max_bytes is not None and nbytes > self.max_bytes:
            raise AdapterCacheFullError(
                f"adapter needs {nbytes} bytes, more than max_adapter_bytes={self.max_bytes}"
            )
        remaining = [e for e in self.entries.values() if e.adapter_id != replacing]
        own_victims = self._own_victims(owner, remaining)
        victims = [e.adapter_id for e in own_victims]
        remaining = [e for e in remaining if e.adapter_id not in victims]
        count, used = len(remaining), sum(e.nbytes for e in remaining)
        for entry in remaining:  # least recently used first
            if count < self.max_adapters and (self.max_bytes is None or used + nbytes <= self.max_bytes):
                break
            if entry.pinned or entry.in_use:
                continue
            victims.append(entry.adapter_id)
            count, used = count - 1, used - entry.nbytes
        if count >= self.max_adapters or (self.max_bytes is not None and used + nbytes > self.max_bytes):
            raise AdapterCacheFullError(
                f"cannot make room: {count} resident adapters ({used} bytes) are pinned or serving requests "
                f"(max_adapters={self.max_adapters}, max_adapter_bytes={self.max_bytes})"
            )
        return victims

    def add(self, entry: CacheEntry) -> None:
        self.entries[entry.adapter_id] = entry
        self.entries.move_to_end(entry.adapter_id)
        stats = self.stats.setdefault(entry.adapter_id, AdapterStats())
        stats.loads += 1
        stats.last_used = time.time()
        self.counters = replace(self.counters, loads=self.counters.loads + 1)

    def remove(self, adapter_id: str, *, evicted: bool = False) -> CacheEntry:
        """`evicted`: pushed out to make room (counted), rather than unloaded or replaced."""
        if evicted:
            self.counters = replace(self.counters, evictions=self.counters.evictions + 1)
        return self.entries.pop(adapter_id)

    def forget(self, adapter_id: str) -> None:
        self.stats.pop(adapter_id, None)

    def record_request(self, adapter_id: str, tokens: int, latency_ms: float) -> None:
        stats = self.stats.setdefault(adapter_id, AdapterStats())
        stats.requests += 1
        stats.tokens_generated += tokens
        stats.total_latency_ms += latency_ms
        stats.last_used = time.time()

    def info(self, adapter_id: str) -> AdapterInfo:
        entry = self.entries[adapter_id]
        stats = self.stats.setdefault(adapter_id, AdapterStats())
        return AdapterInfo(
            adapter_id=entry.adapter_id,
            base_model=entry.base_model,
            path=entry.path,
            task=entry.task,
            rank=entry.rank,
            bytes=entry.nbytes,
            slot=entry.slot,
            pinned=entry.pinned,
            hits=stats.hits,
            last_used=stats.last_used,
            loaded_at=entry.loaded_at,
            load_ms=entry.load_ms,
            loads=stats.loads,
            requests=stats.requests,
            tokens_generated=stats.tokens_generated,
            mean_latency_ms=stats.mean_latency_ms,
            label_names=entry.label_names,
        )
