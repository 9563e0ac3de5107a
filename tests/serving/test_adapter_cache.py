"""Adapter residency: load/unload, LRU eviction, touch on hit, pinning, memory budget, metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from serving_fixtures import TINY_LLAMA_NAME, make_llama_adapter

from lorasp_core.serving import (
    AdapterCacheCounters,
    AdapterCacheFullError,
    GenerationRequest,
    MultiAdapterLinear,
    ServingEngine,
    UnknownAdapterError,
)

EngineFactory = Callable[..., ServingEngine]
# 2 layers x 4 projections x (A 4x64 + B 64x4) float32 entries
ADAPTER_BYTES = 2 * 4 * (2 * 4 * 64) * 4


@pytest.fixture(scope="module")
def adapters(adapter_dir: Path) -> dict[str, Path]:
    paths = {}
    for i, name in enumerate(["a", "b", "c"]):
        paths[name] = adapter_dir / name
        make_llama_adapter(paths[name], seed=10 + i)
    return paths


def wrappers(engine: ServingEngine) -> list[MultiAdapterLinear]:
    return list(engine.base_model(TINY_LLAMA_NAME).wrappers.values())


def slot_is_zero(engine: ServingEngine, slot: int) -> bool:
    return all(
        not w.lora_A_slots[slot].any() and not w.lora_B_slots[slot].any() and w.slot_ranks[slot] == 0
        for w in wrappers(engine)
    )


def request(adapter_id: str | None) -> GenerationRequest:
    return GenerationRequest(model=TINY_LLAMA_NAME, adapter_id=adapter_id, prompt="hi", max_tokens=2)


def test_load_then_unload_frees_the_slot(make_engine: EngineFactory, adapters: dict[str, Path]) -> None:
    engine = make_engine(max_adapters=2)
    info = engine.load_adapter("a", adapters["a"], TINY_LLAMA_NAME)
    assert (info.adapter_id, info.base_model, info.rank, info.slot) == ("a", TINY_LLAMA_NAME, 4, 1)
    assert info.bytes == ADAPTER_BYTES
    assert info.load_ms > 0 and info.loads == 1
    assert not slot_is_zero(engine, info.slot)
    assert [a.adapter_id for a in engine.loaded_adapters()] == ["a"]

    engine.unload_adapter("a")
    assert engine.loaded_adapters() == []
    assert slot_is_zero(engine, info.slot)
    with pytest.raises(UnknownAdapterError):
        engine.generate_batch([request("a")])
    with pytest.raises(UnknownAdapterError):
        engine.unload_adapter("a")


def test_lru_evicts_least_recently_used_and_keeps_touched(
    make_engine: EngineFactory, adapters: dict[str, Path]
) -> None:
    engine = make_engine(max_adapters=2)
    slot_a = engine.load_adapter("a", adapters["a"], TINY_LLAMA_NAME).slot
    slot_b = engine.load_adapter("b", adapters["b"], TINY_LLAMA_NAME).slot
    engine.generate_batch([request("a")])  # touch a: b is now least recently used
    assert engine.adapter_info("a").hits == 1

    info_c = engine.load_adapter("c", adapters["c"], TINY_LLAMA_NAME)
    resident = {a.adapter_id for a in engine.loaded_adapters()}
    assert resident == {"a", "c"}
    assert info_c.slot == slot_b  # b's slot was freed and reused
    assert engine.adapter_info("a").slot == slot_a
    assert len(engine.loaded_adapters()) == 2


def test_eviction_zeroes_the_slot_in_every_module(
    make_engine: EngineFactory, adapters: dict[str, Path], adapter_dir: Path
) -> None:
    q_only = adapter_dir / "q_only"
    make_llama_adapter(q_only, seed=99, targets=["q_proj"])
    engine = make_engine(max_adapters=1)
    slot = engine.load_adapter("a", adapters["a"], TINY_LLAMA_NAME).slot
    assert engine.load_adapter("q", q_only, TINY_LLAMA_NAME).slot == slot  # a evicted, slot reused
    resident = engine.base_model(TINY_LLAMA_NAME)
    for path, wrapper in resident.wrappers.items():
        # a's weights must be gone from the modules q does not target, or they would leak into q's outputs
        assert bool(wrapper.lora_A_slots[slot].any()) == path.endswith("q_proj"), path
    engine.unload_adapter("q")
    assert slot_is_zero(engine, slot)
    assert resident.free_slots == [slot]


def test_evicted_adapter_is_reloaded_on_request(
    make_engine: EngineFactory, adapters: dict[str, Path]
) -> None:
    engine = make_engine(max_adapters=1)
    engine.load_adapter("a", adapters["a"], TINY_LLAMA_NAME)
    before = engine.generate_batch([request("a")])[0].token_ids
    engine.load_adapter("b", adapters["b"], TINY_LLAMA_NAME)  # evicts a
    assert [a.adapter_id for a in engine.loaded_adapters()] == ["b"]
    after = engine.generate_batch([request("a")])[0].token_ids  # hot-loads a again, evicting b
    assert after == before
    info = engine.adapter_info("a")
    assert info.loads == 2 and info.requests == 2 and info.tokens_generated == 4


def test_pinned_adapters_are_never_evicted(make_engine: EngineFactory, adapters: dict[str, Path]) -> None:
    engine = make_engine(max_adapters=2)
    engine.load_adapter("a", adapters["a"], TINY_LLAMA_NAME, pin=True)
    engine.load_adapter("b", adapters["b"], TINY_LLAMA_NAME)
    engine.load_adapter("c", adapters["c"], TINY_LLAMA_NAME)  # a is LRU but pinned: b goes
    assert {a.adapter_id for a in engine.loaded_adapters()} == {"a", "c"}
    assert engine.adapter_info("a").pinned

    engine.pin_adapter("c")
    with pytest.raises(AdapterCacheFullError):
        engine.load_adapter("b", adapters["b"], TINY_LLAMA_NAME)
    assert {a.adapter_id for a in engine.loaded_adapters()} == {"a", "c"}

    engine.pin_adapter("a", pinned=False)
    engine.load_adapter("b", adapters["b"], TINY_LLAMA_NAME)
    assert {a.adapter_id for a in engine.loaded_adapters()} == {"b", "c"}


def test_memory_budget_evicts_by_bytes(make_engine: EngineFactory, adapters: dict[str, Path]) -> None:
    one = ADAPTER_BYTES
    engine = make_engine(max_adapters=8, max_adapter_bytes=2 * one)
    for name in ["a", "b", "c"]:
        engine.load_adapter(name, adapters[name], TINY_LLAMA_NAME)
    assert [a.adapter_id for a in engine.loaded_adapters()] == ["b", "c"]
    assert sum(a.bytes for a in engine.loaded_adapters()) <= 2 * one

    tight = make_engine(max_adapters=8, max_adapter_bytes=one - 1)
    with pytest.raises(AdapterCacheFullError, match="max_adapter_bytes"):
        tight.load_adapter("a", adapters["a"], TINY_LLAMA_NAME)
    assert tight.loaded_adapters() == []


def test_reloading_same_path_is_a_hit(make_engine: EngineFactory, adapters: dict[str, Path]) -> None:
    engine = make_engine(max_adapters=2)
    first = engine.load_adapter("a", adapters["a"], TINY_LLAMA_NAME)
    again = engine.load_adapter("a", adapters["a"], TINY_LLAMA_NAME, pin=True)
    assert again.slot == first.slot and again.loads == 1 and again.hits == 1 and again.pinned


def test_metrics_per_adapter(make_engine: EngineFactory, adapters: dict[str, Path]) -> None:
    engine = make_engine(max_adapters=2)
    engine.load_adapter("a", adapters["a"], TINY_LLAMA_NAME)
    engine.generate_batch([request("a"), request("a"), request(None)])
    info = engine.adapter_info("a")
    assert info.requests == 2 and info.tokens_generated == 4 and info.hits == 2
    assert info.mean_latency_ms is not None and info.mean_latency_ms > 0
    assert info.last_used >= info.loaded_at


def test_base_weights_are_never_modified(make_engine: EngineFactory, adapters: dict[str, Path]) -> None:
    engine = make_engine(max_adapters=2)
    resident = engine.base_model(TINY_LLAMA_NAME)
    before = {k: v.clone() for k, v in resident.model.state_dict().items() if "slots" not in k}
    engine.load_adapter("a", adapters["a"], TINY_LLAMA_NAME)
    engine.generate_batch([request("a")])
    after = {
        k.replace(".base_layer", ""): v for k, v in resident.model.state_dict().items() if "slots" not in k
    }
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cache_counters_survive_unloads_and_count_only_evictions_for_room(
    make_engine: EngineFactory, adapters: dict[str, Path]
) -> None:
    engine = make_engine(max_adapters=2)
    assert engine.cache_counters() == AdapterCacheCounters()
    engine.load_adapter("a", adapters["a"], TINY_LLAMA_NAME)
    engine.load_adapter("b", adapters["b"], TINY_LLAMA_NAME)
    engine.load_adapter("a", adapters["a"], TINY_LLAMA_NAME)  # same path: a hit, not a load
    engine.load_adapter("c", adapters["c"], TINY_LLAMA_NAME)  # no room: b (least recently used) goes
    assert engine.resident_adapter_count() == 2
    engine.unload_adapter("a")  # an explicit unload is no eviction, and forgets a's own stats
    assert engine.cache_counters() == AdapterCacheCounters(hits=1, loads=3, evictions=1)
    assert engine.resident_adapter_count() == 1
