"""One thread does an engine's torch work: a one-off batch and a classification run on the decoding
thread, loads on a thread that ends with them, so no long-lived request thread keeps an OpenMP team
(an idle extra team slows every forward: lorasp_core/serving/openmp_threads.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from serving_fixtures import TINY_LLAMA_NAME, make_llama_adapter

from lorasp_core.serving import GenerationRequest, ServingEngine, decode
from lorasp_core.serving.continuous import EngineClosedError
from lorasp_core.serving.openmp_threads import run_in_short_lived_thread

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


def test_loads_leave_no_thread_behind(make_engine: EngineFactory, adapter_dir: Path) -> None:
    engine = make_engine(max_adapters=2)
    make_llama_adapter(adapter_dir / "a", seed=4)
    before = {t.ident for t in threading.enumerate()}
    engine.load_adapter("a", adapter_dir / "a", TINY_LLAMA_NAME)  # loads the base model too
    engine.unload_adapter("a")
    assert {t.ident for t in threading.enumerate()} <= before


def test_short_lived_thread_returns_and_raises() -> None:
    caller = threading.current_thread()
    assert run_in_short_lived_thread(lambda: threading.current_thread() is not caller)
    with pytest.raises(KeyError):
        run_in_short_lived_thread(lambda: {}["missing"])
