"""One request's failure stays its own: a poisoned row among good ones fails alone, the batch completes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from serving_fixtures import TINY_LLAMA_NAME, make_llama_adapter, make_tiny_tokenizer

from lorasp_core.serving import GenerationChunk, GenerationRequest, GenerationResult, ServingEngine
from lorasp_core.serving import sampling as sampling_module
from lorasp_core.serving.decode import DecodeRow, decode_batch

EngineFactory = Callable[..., ServingEngine]
PROMPTS = ["Hello there, how are you?", "hi", "The quick brown fox"]
POISON_TEMPERATURE = 0.7  # the sampling step of a request with exactly this temperature raises


@pytest.fixture
def engine(make_engine: EngineFactory, adapter_dir: Path) -> ServingEngine:
    engine = make_engine(max_adapters=2, batch_window_ms=20)
    make_llama_adapter(adapter_dir / "iso", seed=5)
    engine.load_adapter("iso", adapter_dir / "iso", TINY_LLAMA_NAME)
    return engine


def rows(prompts: list[str], **kwargs: object) -> list[DecodeRow]:
    tokenizer = make_tiny_tokenizer()
    return [DecodeRow(prompt_ids=tokenizer(p)["input_ids"], slot=0, max_tokens=8, **kwargs) for p in prompts]  # type: ignore[arg-type]


def tokens(results: list[GenerationResult | BaseException]) -> list[list[int]]:
    assert all(isinstance(r, GenerationResult) for r in results), results
    return [r.token_ids for r in results if isinstance(r, GenerationResult)]


def test_poisoned_rows_fail_alone_in_decode_batch(engine: ServingEngine) -> None:
    resident = engine.base_model(TINY_LLAMA_NAME)
    alone = tokens(decode_batch(resident, rows(PROMPTS)))
    failures: list[BaseException] = []

    # The reported bug: a seed torch.Generator cannot take (it overflows at seeding).
    (bad_seed,) = rows(["x"], temperature=1.0, seed=2**64, fail=failures.append)

    # A row that fails mid-decode, after its first token, while the others keep going.
    def explode(chunk: GenerationChunk) -> None:
        raise RuntimeError("reader exploded")

    (mid_batch,) = rows(["a longer prompt"], emit=explode, fail=failures.append)
    good = rows(PROMPTS)
    mixed = decode_batch(resident, [good[0], bad_seed, good[1], mid_batch, good[2]])
    assert isinstance(mixed[1], ValueError) and "seed" in str(mixed[1])
    assert isinstance(mixed[3], RuntimeError) and str(mixed[3]) == "reader exploded"
    assert failures == [mixed[1], mixed[3]]  # each failed row was told, once
    assert tokens([mixed[0], mixed[2], mixed[4]]) == alone  # the others are exactly as alone
    assert all(len(t) > 1 for t in alone)  # they ran past the step where the mid-batch row died


def test_a_batch_of_only_poisoned_rows_returns_their_errors(engine: ServingEngine) -> None:
    resident = engine.base_model(TINY_LLAMA_NAME)
    results = decode_batch(resident, rows(["x", "y"], temperature=1.0, seed=-(2**63) - 1))
    assert all(isinstance(r, ValueError) for r in results)


def test_out_of_range_seed_is_refused_before_queueing(engine: ServingEngine) -> None:
    for seed in (2**64, -(2**63) - 1):
        bad = GenerationRequest(model=TINY_LLAMA_NAME, prompt="x", temperature=1.0, seed=seed)
        with pytest.raises(ValueError, match="seed must be in"):
            engine.generate(bad)
    edge = GenerationRequest(model=TINY_LLAMA_NAME, prompt="x", temperature=1.0, seed=2**64 - 1, max_tokens=2)
    assert engine.generate_batch([edge])[0].completion_tokens == 2


def test_scheduled_batch_with_a_poisoned_request_serves_the_others(
    engine: ServingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sample = sampling_module.sample_token

    def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: object) -> int:
        if temperature == POISON_TEMPERATURE:
            raise RuntimeError("poisoned row")
        return real_sample(logits, temperature, top_p, generator)  # type: ignore[arg-type]

    monkeypatch.setattr(sampling_module, "sample_token", sample)

    def request(adapter_id: str | None, prompt: str, temperature: float = 0.0) -> GenerationRequest:
        return GenerationRequest(
            model=TINY_LLAMA_NAME, adapter_id=adapter_id, prompt=prompt, max_tokens=8, temperature=temperature
        )

    good = [request("iso", PROMPTS[0]), request(None, PROMPTS[1]), request("iso", PROMPTS[2])]
    expected = [engine.generate_batch([r])[0].text for r in good]
    outcomes: dict[int, str | BaseException] = {}
    batches_before = len(engine.batch_sizes)

    def client(index: int, req: GenerationRequest) -> None:
        try:
            outcomes[index] = engine.generate(req).text()
        except Exception as error:
            outcomes[index] = error

    submitted = [*good, request("iso", "poison", temperature=POISON_TEMPERATURE)]
    with engine.scheduler_paused():
        threads = [threading.Thread(target=client, args=(i, r)) for i, r in enumerate(submitted)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60  # a safety net against hanging, not a timing assertion
        while engine.pending_requests() < len(submitted) and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=60)
    assert engine.batch_sizes[batches_before:] == [len(submitted)]  # all four shared one batch
    assert [outcomes[i] for i in range(len(good))] == expected
    poisoned = outcomes[len(good)]
    assert isinstance(poisoned, RuntimeError) and str(poisoned) == "poisoned row"
    # Every row handed its adapter back (the poisoned one too): unloading frees the slot at once.
    engine.unload_adapter("iso")
    assert engine.loaded_adapters() == []
