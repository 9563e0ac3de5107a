"""Per-owner adapter quotas: no owner takes every slot; an owner at its quota evicts its own LRU first."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from serving_fixtures import TINY_LLAMA_NAME, make_llama_adapter

from lorasp_core.serving import AdapterCacheFullError, AdapterQuotaError, GenerationRequest, ServingEngine
from lorasp_core.serving.cache import AdapterCache, CacheEntry

EngineFactory = Callable[..., ServingEngine]


def entry(adapter_id: str, owner: str | None, *, pinned: bool = False, in_use: int = 0) -> CacheEntry:
    return CacheEntry(
        adapter_id=adapter_id,
        base_model="m",
        path=f"/{adapter_id}",
        task="causal-lm",
        rank=4,
        nbytes=10,
        slot=0,
        pinned=pinned,
        loaded_at=0.0,
        load_ms=0.0,
        label_names=None,
        chat_template=None,
        in_use=in_use,
        owner=owner,
    )


def cache_with(*entries: CacheEntry, pinned: int = 2, resident: int = 3, slots: int = 6) -> AdapterCache:
    cache = AdapterCache(slots, max_pinned_per_owner=pinned, max_resident_per_owner=resident)
    for item in entries:
        cache.add(item)
    return cache


def test_owner_at_its_resident_quota_evicts_its_own_lru_even_with_room() -> None:
    cache = cache_with(entry("b1", "bob"), entry("a1", "alice"), entry("a2", "alice"), entry("a3", "alice"))
    assert cache.plan_admission(10, owner="alice") == ["a1"]  # not bob's b1, the global LRU
    assert cache.plan_admission(10, owner="bob") == []  # bob is within his quota, and there is room
    assert cache.plan_admission(10, owner=None) == []  # no owner, no quota


def test_owner_whose_quota_is_all_pinned_or_busy_gets_a_quota_error() -> None:
    cache = cache_with(
        entry("a1", "alice", pinned=True),
        entry("a2", "alice", pinned=True),
        entry("a3", "alice", in_use=1),
        entry("b1", "bob"),
    )
    with pytest.raises(AdapterQuotaError) as caught:
        cache.plan_admission(10, owner="alice")
    assert (caught.value.owner, caught.value.kind, caught.value.limit) == ("alice", "resident", 3)
    assert cache.plan_admission(10, owner="bob") == []  # alice's full quota is not bob's problem


def test_pin_quota_counts_the_owners_other_pins_only() -> None:
    cache = cache_with(
        entry("a1", "alice", pinned=True), entry("a2", "alice", pinned=True), entry("a3", "alice")
    )
    cache.check_pin("alice", "a1")  # re-pinning one already pinned is no new pin
    with pytest.raises(AdapterQuotaError) as caught:
        cache.check_pin("alice", "a3")
    assert caught.value.kind == "pinned" and caught.value.limit == 2
    cache.check_pin("bob", "b1")
    cache.check_pin(None, "x")


def test_global_capacity_still_applies_after_the_quota() -> None:
    cache = cache_with(entry("a1", "alice", pinned=True), entry("b1", "bob", pinned=True), slots=2)
    with pytest.raises(AdapterCacheFullError) as caught:
        cache.plan_admission(10, owner="carol")
    assert not isinstance(caught.value, AdapterQuotaError)


def test_quotas_are_validated() -> None:
    with pytest.raises(ValueError, match="max_pinned_per_owner"):
        AdapterCache(4, max_pinned_per_owner=0)


def test_engine_enforces_quotas_and_reloads_for_the_owner(
    make_engine: EngineFactory, adapter_dir: Path
) -> None:
    engine = make_engine(max_adapters=4, max_pinned_per_owner=1, max_resident_per_owner=2)
    make_llama_adapter(adapter_dir / "q", seed=4)
    engine.load_adapter("a1", adapter_dir / "q", TINY_LLAMA_NAME, owner="alice", pin=True)
    with pytest.raises(AdapterQuotaError):
        engine.load_adapter("a2", adapter_dir / "q", TINY_LLAMA_NAME, owner="alice", pin=True)
    assert [i.adapter_id for i in engine.loaded_adapters()] == ["a1"]  # the refused load changed nothing
    engine.load_adapter("a2", adapter_dir / "q", TINY_LLAMA_NAME, owner="alice")
    with pytest.raises(AdapterQuotaError):
        engine.pin_adapter("a2")
    engine.load_adapter("a3", adapter_dir / "q", TINY_LLAMA_NAME, owner="alice")  # evicts a2, her LRU
    assert [i.adapter_id for i in engine.loaded_adapters()] == ["a1", "a3"]
    engine.load_adapter("b1", adapter_dir / "q", TINY_LLAMA_NAME, owner="bob", pin=True)
    # a2, evicted, is reloaded on demand under alice's quota again: it evicts a3, never bob's b1.
    engine.generate_batch(
        [GenerationRequest(model=TINY_LLAMA_NAME, adapter_id="a2", prompt="x", max_tokens=1)]
    )
    assert {i.adapter_id for i in engine.loaded_adapters()} == {"a1", "a2", "b1"}
