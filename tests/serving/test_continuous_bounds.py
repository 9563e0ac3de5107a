"""Continuous batching's bounds: rows per batch, KV-cache bytes (measured from the cache tensors), the
wait queue (ServingOverloadedError), the figures metrics read, and static batching still selectable."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from continuous_fixtures import WAIT_S, assert_as_alone, make_row, record_tokens, scheduler_for, wait_all
from serving_fixtures import TINY_LLAMA_NAME, make_llama_adapter

from lorasp_core.serving import GenerationRequest, ServingEngine, ServingOverloadedError, running_batch
from lorasp_core.serving.running_batch import RunningBatch, kv_bytes_per_token

EngineFactory = Callable[..., ServingEngine]


@pytest.fixture
def engine(make_engine: EngineFactory, adapter_dir: Path) -> ServingEngine:
    engine = make_engine(max_adapters=2)
    make_llama_adapter(adapter_dir / "b1", seed=21)
    engine.load_adapter("b1", adapter_dir / "b1", TINY_LLAMA_NAME)
    return engine


def record_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(rows, measured KV bytes) before every decode step."""
    steps: list[tuple[int, int]] = []
    real_step = RunningBatch.step

    def step(self: RunningBatch) -> None:
        steps.append((len(self.rows), self.kv_bytes()))
        real_step(self)

    monkeypatch.setattr(running_batch.RunningBatch, "step", step)
    return steps


def test_kv_bytes_are_measured_from_the_cache_and_match_the_config_estimate(engine: ServingEngine) -> None:
    resident = engine.base_model(TINY_LLAMA_NAME)
    batch = RunningBatch(resident)
    rows = [
        make_row(engine, "b1", "Hello there", max_tokens=8)[0],
        make_row(engine, None, "hi", max_tokens=8)[0],
    ]
    batch.admit(rows)
    assert batch.attention_mask is not None
    width = batch.attention_mask.shape[1] - 1  # the mask also covers each row's pending token
    assert width == len(rows[0].prompt_ids)
    assert batch.kv_bytes() == kv_bytes_per_token(resident) * 2 * width > 0
    batch.step()
    assert batch.kv_bytes() == kv_bytes_per_token(resident) * 2 * (width + 1)


def test_rows_bound_holds_back_the_third_request_until_a_row_leaves(
    engine: ServingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = record_tokens(monkeypatch)
    steps = record_steps(monkeypatch)
    scheduler = scheduler_for(engine, max_rows=2)
    try:
        rows = [
            make_row(engine, "b1", "one", max_tokens=3),
            make_row(engine, None, "two", max_tokens=10),
            make_row(engine, "b1", "three", max_tokens=5, temperature=1.0, seed=4),
        ]
        with scheduler.paused():
            for row, _ in rows:
                scheduler.submit(TINY_LLAMA_NAME, row)
            assert scheduler.pending() == 3
        wait_all([recorded for _, recorded in rows])
    finally:
        scheduler.close()
    assert scheduler.batch_sizes == [2, 1]  # the third joined once the first left
    assert max(rows_now for rows_now, _ in steps) == 2
    assert_as_alone(engine, rows, tokens)


def test_kv_bound_admits_what_fits_for_its_worst_case(
    engine: ServingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = record_steps(monkeypatch)
    resident = engine.base_model(TINY_LLAMA_NAME)
    per_token = kv_bytes_per_token(resident)
    rows = [make_row(engine, "b1", "abcd", max_tokens=6, ignore_eos=True) for _ in range(3)]
    final = len(rows[0][0].prompt_ids) + 6
    limit = per_token * 2 * final  # two rows at their longest fit, three do not
    scheduler = scheduler_for(engine, max_kv_bytes=limit)
    try:
        with pytest.raises(ValueError, match="KV cache"):
            scheduler.check_fits(resident, make_row(engine, None, "abcd", max_tokens=3 * final)[0])
        with scheduler.paused():
            for row, _ in rows:
                scheduler.submit(TINY_LLAMA_NAME, row)
        wait_all([recorded for _, recorded in rows])
    finally:
        scheduler.close()
    assert scheduler.batch_sizes == [2, 1]
    assert all(kv <= limit for _, kv in steps) and max(kv for _, kv in steps) > limit // 2


def test_full_wait_queue_is_overloaded_and_frees_the_adapter(
    make_engine: EngineFactory, adapter_dir: Path
) -> None:
    engine = make_engine(max_adapters=2, max_waiting_requests=1)
    make_llama_adapter(adapter_dir / "b2", seed=22)
    engine.load_adapter("b2", adapter_dir / "b2", TINY_LLAMA_NAME)
    request = GenerationRequest(model=TINY_LLAMA_NAME, adapter_id="b2", prompt="hi", max_tokens=3)
    with engine.scheduler_paused():
        queued = engine.generate(request)
        with pytest.raises(ServingOverloadedError) as raised:
            engine.generate(request)
        assert (raised.value.waiting, raised.value.limit) == (1, 1) and raised.value.retry_after_s >= 1
        assert engine.batching_figures().waiting_requests == 1
    assert queued.text() == engine.generate_batch([request])[0].text
    assert engine.adapter_info("b2").requests == 2  # the refused one was never counted
    engine.unload_adapter("b2")  # nothing holds it: the refused request handed it back
    assert engine.loaded_adapters() == []


def test_batching_figures_count_running_rows_and_kv_bytes(engine: ServingEngine) -> None:
    assert engine.batching_figures().running_rows == 0
    long = GenerationRequest(
        model=TINY_LLAMA_NAME, adapter_id="b1", prompt="abc", max_tokens=200, ignore_eos=True
    )
    stream = engine.generate(long)
    next(stream)
    deadline = time.monotonic() + WAIT_S  # a safety net against hanging, not a timing assertion
    figures = engine.batching_figures()
    while figures.running_rows == 0 and time.monotonic() < deadline:
        figures = engine.batching_figures()
    stream.cancel()
    stream.text()
    assert figures.mode == "continuous" and figures.running_rows == 1 and figures.kv_cache_bytes > 0


def test_static_batching_is_still_selectable(make_engine: EngineFactory, adapter_dir: Path) -> None:
    engine = make_engine(max_adapters=2, batching="static", batch_window_ms=20)
    make_llama_adapter(adapter_dir / "b3", seed=23)
    engine.load_adapter("b3", adapter_dir / "b3", TINY_LLAMA_NAME)
    requests = [
        GenerationRequest(model=TINY_LLAMA_NAME, adapter_id=a, prompt=p, max_tokens=6)
        for a, p in [("b3", "one"), (None, "two"), ("b3", "three")]
    ]
    expected = [engine.generate_batch([r])[0].text for r in requests]
    texts: dict[int, str] = {}
    with engine.scheduler_paused():
        threads = [
            threading.Thread(target=lambda i=i, r=r: texts.__setitem__(i, engine.generate(r).text()))
            for i, r in enumerate(requests)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + WAIT_S  # a safety net against hanging, not a timing assertion
        while engine.pending_requests() < len(requests) and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=WAIT_S)
    assert engine.batch_sizes == [3] and [texts[i] for i in range(3)] == expected
    assert engine.batching_figures().mode == "static"
    with pytest.raises(ValueError, match="batching"):
        make_engine(batching="dynamic")
