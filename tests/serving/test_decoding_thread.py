"""One thread does an engine's torch work: a one-off batch and a classification run on the decoding
thread, loads on a thread that ends with them, so no long-lived request thread keeps an OpenMP team
(an idle extra team slows every forward: lorasp_core/serving/openmp_threads.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from serving_fixtures import TINY_LLAMA_NAME, make_llama_adapter

from lorasp_core.serving import GenerationRequest, ServingEngine, decode
from lorasp_core.serving.continuous import EngineClosedError
from lorasp_core.serving.openmp_threads import run_in_short_lived_thread
from lorasp_core.serving.resident import ResidentModel
from lorasp_core.serving.running_batch import RunningBatch

EngineFactory = Callable[..., ServingEngine]


def forward_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads that run the static decode loop (every one-off batch goes through it)."""
    names: list[str] = []
    real = decode.decode_batch

    def recording(*args: object, **kwargs: object) -> object:
        names.append(threading.current_thread().name)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("lorasp_core.serving.engine.decode_batch", recording)
    return names


def test_a_one_off_batch_runs_on_the_decoding_thread(
    make_engine: EngineFactory, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(max_adapters=2)
    make_llama_adapter(adapter_dir / "a", seed=3)
    engine.load_adapter("a", adapter_dir / "a", TINY_LLAMA_NAME)
    names = forward_threads(monkeypatch)
    request = GenerationRequest(model=TINY_LLAMA_NAME, adapter_id="a", prompt="hello", max_tokens=4)
    alone = engine.generate_batch([request])[0]
    streamed = engine.generate(request).text()  # a running batch exists on the same thread meanwhile
    again = engine.generate_batch([request])[0]
    assert names == ["lorasp-continuous-batcher", "lorasp-continuous-batcher"]
    assert alone.text == streamed == again.text and alone.completion_tokens == 4


def test_a_one_off_batch_runs_while_the_scheduler_is_paused(make_engine: EngineFactory) -> None:
    engine = make_engine(max_adapters=1)
    request = GenerationRequest(model=TINY_LLAMA_NAME, prompt="hi", max_tokens=3)
    with engine.scheduler_paused():
        result = engine.generate_batch([request])[0]
    assert result.completion_tokens == 3


def test_an_error_of_the_work_reaches_the_caller_and_the_loop_goes_on(make_engine: EngineFactory) -> None:
    engine = make_engine(max_adapters=1)
    bad = GenerationRequest(model=TINY_LLAMA_NAME, prompt="hi", max_tokens=3)

    def boom() -> None:
        raise RuntimeError("work failed")

    with pytest.raises(RuntimeError, match="work failed"):
        engine._continuous.call(boom)
    assert engine.generate_batch([bad])[0].completion_tokens == 3


def test_no_work_is_taken_after_close(make_engine: EngineFactory) -> None:
    engine = make_engine(max_adapters=1)
    engine.generate_batch([GenerationRequest(model=TINY_LLAMA_NAME, prompt="hi", max_tokens=2)])
    engine.close()
    with pytest.raises(EngineClosedError):
        engine.generate_batch([GenerationRequest(model=TINY_LLAMA_NAME, prompt="hi", max_tokens=2)])


def test_loads_run_on_a_thread_that_ends(
    make_engine: EngineFactory, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base model's load, an adapter's install and its slot's release run on short-lived threads."""
    names: list[tuple[str, str]] = []
    for method in ("__init__", "install", "release_slot"):
        real = getattr(ResidentModel, method)

        def recording(self: ResidentModel, *args: object, _real: Any = real, _name: str = method) -> object:
            names.append((_name, threading.current_thread().name))
            return _real(self, *args)

        monkeypatch.setattr(ResidentModel, method, recording)
    engine = make_engine(max_adapters=2)
    make_llama_adapter(adapter_dir / "a", seed=4)
    before = {t.ident for t in threading.enumerate()}
    engine.load_adapter("a", adapter_dir / "a", TINY_LLAMA_NAME)  # loads the base model too
    engine.unload_adapter("a")
    assert names == [
        ("__init__", "lorasp-torch-work"),
        ("install", "lorasp-torch-work"),
        ("release_slot", "lorasp-torch-work"),
    ]
    assert {t.ident for t in threading.enumerate()} <= before


def test_engine_calls_inside_active_slots_run_inline(make_engine: EngineFactory, adapter_dir: Path) -> None:
    """Inside `active_slots` the caller holds the model's lock: a load, a one-off batch or a
    classification handed to another thread would wait for it forever."""
    engine = make_engine(max_adapters=2)
    make_llama_adapter(adapter_dir / "b", seed=5)
    request = GenerationRequest(model=TINY_LLAMA_NAME, prompt="hi", max_tokens=2)
    engine.generate_batch([request])  # the base model is resident
    results: list[object] = []

    def inside() -> None:
        with engine.active_slots(TINY_LLAMA_NAME, torch.tensor([0])):
            results.append(engine.load_adapter("b", adapter_dir / "b", TINY_LLAMA_NAME).slot)
            results.append(engine.generate_batch([request])[0].completion_tokens)
            engine.unload_adapter("b")
            results.append("unloaded")

    thread = threading.Thread(target=inside, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "an engine call inside active_slots deadlocked"
    assert results[1:] == [2, "unloaded"]


def test_short_lived_thread_returns_and_raises() -> None:
    caller = threading.current_thread()
    assert run_in_short_lived_thread(lambda: threading.current_thread() is not caller)
    with pytest.raises(KeyError):
        run_in_short_lived_thread(lambda: {}["missing"])


def test_a_steady_flow_of_calls_does_not_starve_the_running_batch(
    make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call queues the next before it returns, so the queue is never empty at a boundary: the
    running batch must still take a step between any two of them."""
    engine = make_engine(max_adapters=1)
    scheduler = engine._continuous
    steps = [0]
    real_step = RunningBatch.step

    def counting_step(batch: RunningBatch) -> None:
        steps[0] += 1
        real_step(batch)

    monkeypatch.setattr(RunningBatch, "step", counting_step)
    long = GenerationRequest(model=TINY_LLAMA_NAME, prompt="hello", max_tokens=400, ignore_eos=True)
    stream = engine.generate(long)
    next(iter(stream))  # the row is running
    seen: list[int] = []
    queued: list[threading.Thread] = []

    def link(remaining: int) -> None:
        seen.append(steps[0])
        if remaining == 0:
            return
        before = len(scheduler._calls)
        thread = threading.Thread(target=scheduler.call, args=(lambda: link(remaining - 1),))
        thread.start()
        queued.append(thread)
        while len(scheduler._calls) == before:  # the next link is queued before this one returns
            time.sleep(0.001)

    scheduler.call(lambda: link(12))
    for thread in queued:
        thread.join(timeout=30)
    stream.cancel()
    assert len(seen) == 13
    assert all(b > a for a, b in zip(seen, seen[1:], strict=False)), seen
