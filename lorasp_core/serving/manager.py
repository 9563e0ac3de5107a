"""AdapterManager: resident base models and an LRU of hot-loaded adapters living in slots.

Modelled on vLLM's LoRA manager: explicit capacity (adapters = slots), touch on hit, LRU eviction that
zeroes the slot and drops the adapter's tensors, pinning, and load errors wrapped with context.
Adapters that are evicted stay *known* (id -> path), so a later request hot-loads them again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch

from lorasp_core.peft_format import LORASP_FILE
from lorasp_core.serving.adapter_files import ParsedAdapter, read_peft_adapter
from lorasp_core.serving.cache import AdapterCache, AdapterCacheCounters, CacheEntry
from lorasp_core.serving.chat_template import check_chat_template
from lorasp_core.serving.classification import adapter_label_names
from lorasp_core.serving.openmp_threads import run_in_short_lived_thread
from lorasp_core.serving.resident import ResidentModel
from lorasp_core.serving.types import (
    AdapterInfo,
    AdapterLoadError,
    BaseModelBundle,
    ChatTemplateError,
    TemplateBudget,
    UnknownAdapterError,
)

T = TypeVar("T")

logger = logging.getLogger("lorasp_core.serving")

_LRU_EVICTION = "least recently used"  # the one eviction reason counted as an eviction in the metrics


class AdapterManager:
    def __init__(
        self,
        base_loader: Callable[[str], BaseModelBundle],
        *,
        max_adapters: int = 8,
        max_adapter_bytes: int | None = None,
        max_rank: int = 64,
        max_pinned_per_owner: int | None = None,
        max_resident_per_owner: int | None = None,
        template_budget: TemplateBudget | None = None,
    ) -> None:
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        self._base_loader = base_loader
        self.max_rank = max_rank
        self.template_budget = template_budget or TemplateBudget()
        self._cache = AdapterCache(
            max_adapters,
            max_adapter_bytes,
            max_pinned_per_owner=max_pinned_per_owner,
            max_resident_per_owner=max_resident_per_owner,
        )
        self._residents: dict[str, ResidentModel] = {}
        # every loaded adapter id -> (path, base model, owner): what a reload after eviction needs
        self._known: dict[str, tuple[Path, str, str | None]] = {}
        self._lock = threading.RLock()  # adapter bookkeeping; never held across a base-model load
        self._base_load_lock = threading.Lock()

    # base models ------------------------------------------------------------------------------------
    def base_model(self, name: str) -> ResidentModel:
        """The resident copy of base model `name`, loaded through `base_loader` on first use."""
        with self._lock:
            resident = self._residents.get(name)
        if resident is not None:
            return resident
        with self._base_load_lock:
            with self._lock:
                resident = self._residents.get(name)
            if resident is None:
                started = time.perf_counter()
                resident = run_in_short_lived_thread(
                    lambda: ResidentModel(name, self._base_loader(name), self._cache.max_adapters + 1)
                )
                with self._lock:
                    self._residents[name] = resident
                logger.info("base model %r resident (%.0f ms)", name, (time.perf_counter() - started) * 1e3)
        return resident

    @staticmethod
    def _torch_work(resident: ResidentModel, work: Callable[[], T]) -> T:
        """Torch work on `resident` off the calling thread (openmp_threads), unless the caller holds the
        model's lock (inside `active_slots`): the other thread would wait for it, the caller for that one."""
        return work() if resident.held_here() else run_in_short_lived_thread(work)

    # adapters ---------------------------------------------------------------------------------------
    def check_adapter(
        self, adapter_id: str, path: Path | str, base_model: str
    ) -> tuple[ParsedAdapter, tuple[str, ...] | None]:
        """Parse an adapter directory and validate it against `base_model` without taking a slot.

        The adapter's chat template, if any, must render a probe conversation within the template
        budget. Returns the parsed adapter and its label names (None for a causal LM); raises
        AdapterLoadError.
        """
        parsed, resident, labels = self._check(adapter_id, path, base_model)
        if parsed.chat_template is not None:
            try:
                check_chat_template(
                    parsed.chat_template, budget=self.template_budget, variables=resident.template_variables
                )
            except ChatTemplateError as error:
                raise AdapterLoadError(adapter_id, LORASP_FILE, f"chat_template {error.problem}") from error
        return parsed, labels

    def _check(
        self, adapter_id: str, path: Path | str, base_model: str
    ) -> tuple[ParsedAdapter, ResidentModel, tuple[str, ...] | None]:
        # Reading converts tensors (parallel ops): off this thread, like every torch op (openmp_threads).
        parsed = run_in_short_lived_thread(
            lambda: read_peft_adapter(adapter_id, path, max_rank=self.max_rank)
        )
        resident = self.base_model(base_model)
        resident.validate(parsed)
        return parsed, resident, adapter_label_names(resident, parsed)

    def load_adapter(
        self,
        adapter_id: str,
        path: Path | str,
        base_model: str,
        *,
        pin: bool = False,
        owner: str | None = None,
    ) -> AdapterInfo:
        """Hot-load a PEFT adapter directory into a free slot (evicting LRU adapters if needed).

        Already resident from the same path: a cache hit (touch; `pin=True` pins it). `owner` (a tenant)
        is held to the per-owner quotas: at its resident quota its own LRU adapter is evicted first; a
        pin over its pinned quota, or no own adapter to evict, raises AdapterQuotaError. On any
        AdapterLoadError / AdapterCacheFullError the engine is exactly as before.
        """
        started = time.perf_counter()
        path = Path(path)
        with self._lock:
            entry = self._cache.get(adapter_id)
            if entry is not None and Path(entry.path) == path and entry.base_model == base_model:
                if pin and not entry.pinned:
                    self._cache.check_pin(entry.owner, adapter_id)
                entry.pinned = entry.pinned or pin
                self._cache.touch(adapter_id)
                return self._cache.info(adapter_id)
        parsed, resident, labels = self._check(adapter_id, path, base_model)
        with self._lock:
            existing = self._cache.get(adapter_id)
            if existing is not None and existing.in_use:
                raise AdapterLoadError(
                    adapter_id, str(path), "cannot replace an adapter that is serving requests"
                )
            if pin:
                self._cache.check_pin(owner, adapter_id)
            victims = self._cache.plan_admission(
                parsed.nbytes, replacing=adapter_id if existing else None, owner=owner
            )
            if existing is not None:
                self._evict(adapter_id, reason="replaced")
            for victim in victims:
                self._evict(victim, reason=_LRU_EVICTION)
            slot = resident.take_slot()
            self._torch_work(resident, lambda: resident.install(slot, parsed))
            load_ms = (time.perf_counter() - started) * 1e3
            self._cache.add(
                CacheEntry(
                    adapter_id=adapter_id,
                    base_model=base_model,
                    path=str(path),
                    task=parsed.task,
                    rank=parsed.rank,
                    nbytes=parsed.nbytes,
                    slot=slot,
                    pinned=pin,
                    loaded_at=time.time(),
                    load_ms=load_ms,
                    label_names=labels,
                    chat_template=parsed.chat_template,
                    owner=owner,
                )
            )
            self._known[adapter_id] = (path, base_model, owner)
            info = self._cache.info(adapter_id)
        logger.info(
            "adapter %r loaded on %r: slot %d, rank %d, %d bytes, %.1f ms",
            adapter_id,
            base_model,
            slot,
            info.rank,
            info.bytes,
            load_ms,
        )
        return info

    def _evict(self, adapter_id: str, *, reason: str) -> None:
        entry = self._cache.remove(adapter_id, evicted=reason == _LRU_EVICTION)
        resident = self._residents[entry.base_model]
        self._torch_work(resident, lambda: resident.release_slot(entry.slot))
        stats = self._cache.stats.get(adapter_id)
        logger.info(
            "adapter %r evicted (%s): slot %d freed, %d bytes; hits=%d requests=%d",
            adapter_id,
            reason,
            entry.slot,
            entry.nbytes,
            stats.hits if stats else 0,
            stats.requests if stats else 0,
        )

    def unload_adapter(self, adapter_id: str) -> None:
        """Forget an adapter; its slot is freed now, or when the requests using it finish."""
        with self._lock:
            if adapter_id not in self._known and adapter_id not in self._cache:
                raise UnknownAdapterError(f"adapter {adapter_id!r} is not loaded")
            self._known.pop(adapter_id, None)
            entry = self._cache.get(adapter_id)
            if entry is not None and entry.in_use:
                entry.pinned, entry.unload_when_idle = False, True
            elif entry is not None:
                self._evict(adapter_id, reason="unloaded")
                self._cache.forget(adapter_id)

    def pin_adapter(self, adapter_id: str, pinned: bool = True) -> None:
        with self._lock:
            entry = self._cache.get(adapter_id)
            if entry is None:
                raise UnknownAdapterError(f"adapter {adapter_id!r} is not resident")
            if pinned and not entry.pinned:
                self._cache.check_pin(entry.owner, adapter_id)
            entry.pinned = pinned

    def cache_counters(self) -> AdapterCacheCounters:
        """Adapter cache hits, loads and evictions since start (a snapshot; metrics read it at scrape)."""
        with self._lock:
            return self._cache.counters

    def resident_adapter_count(self) -> int:
        with self._lock:
            return len(self._cache)

    def loaded_adapters(self) -> list[AdapterInfo]:
        """Resident adapters, least recently used first, with their metrics."""
        with self._lock:
            return [self._cache.info(adapter_id) for adapter_id in self._cache.entries]

    def adapter_info(self, adapter_id: str) -> AdapterInfo:
        with self._lock:
            if adapter_id not in self._cache:
                raise UnknownAdapterError(f"adapter {adapter_id!r} is not resident")
            return self._cache.info(adapter_id)

    def _acquire(self, base_model: str, adapter_id: str | None) -> tuple[ResidentModel, CacheEntry | None]:
        """Resident base + adapter marked in use (reloaded if it was evicted): not evictable mid-request."""
        resident = self.base_model(base_model)
        if adapter_id is None:
            return resident, None
        for _ in range(3):  # an eviction can race between reload and use; retry
            with self._lock:
                entry = self._cache.get(adapter_id)
                if entry is not None and not entry.unload_when_idle:
                    if entry.base_model != base_model:
                        raise ValueError(
                            f"adapter {adapter_id!r} belongs to {entry.base_model!r}, not {base_model!r}"
                        )
                    self._cache.touch(adapter_id)
                    entry.in_use += 1
                    return resident, entry
                known = self._known.get(adapter_id)
            if known is None:
                raise UnknownAdapterError(f"adapter {adapter_id!r} is not loaded")
            if known[1] != base_model:
                raise ValueError(f"adapter {adapter_id!r} belongs to {known[1]!r}, not {base_model!r}")
            self.load_adapter(adapter_id, known[0], base_model, owner=known[2])
        raise RuntimeError(f"adapter {adapter_id!r} was evicted again while being reloaded")

    def _release(self, adapter_id: str | None, tokens: int = 0, latency_ms: float | None = None) -> None:
        """Undo `_acquire`; a request that ran (latency given) is counted in the adapter's metrics."""
        if adapter_id is None:
            return
        with self._lock:
            if latency_ms is not None:
                self._cache.record_request(adapter_id, tokens, latency_ms)
            entry = self._cache.get(adapter_id)
            if entry is None:
                return
            entry.in_use -= 1
            if entry.in_use == 0 and entry.unload_when_idle:
                self._evict(adapter_id, reason="unloaded")
                self._cache.forget(adapter_id)

    def slot_of(self, adapter_id: str) -> int:
        return self.adapter_info(adapter_id).slot

    @contextmanager
    def active_slots(self, base_model: str, row_slots: torch.Tensor) -> Iterator[ResidentModel]:
        """Low-level: run your own forwards on the resident base with per-row adapter slots."""
        resident = self.base_model(base_model)
        with resident.active_slots(row_slots):
            yield resident
