"""A text too long for any context is refused (or cut) before tokenizing: it never holds the lock."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from serving_fixtures import TINY_BERT_NAME, TINY_LLAMA_NAME

from lorasp_core.serving import GenerationRequest, ServingEngine

EngineFactory = Callable[..., ServingEngine]


@pytest.fixture
def engine(make_engine: EngineFactory) -> ServingEngine:
    return make_engine(max_adapters=1)


def test_a_prompt_longer_than_any_context_is_refused_without_the_tokenizer(engine: ServingEngine) -> None:
    resident = engine.base_model(TINY_LLAMA_NAME)
    limit = resident.max_text_chars
    assert limit is not None and limit > 0
    huge = "x" * (limit + 1)
    outcomes: list[BaseException] = []

    def submit(request: GenerationRequest) -> None:
        try:
            engine.generate(request)
        except ValueError as error:
            outcomes.append(error)

    with resident.tokenizer_lock:  # held here: a request that tokenized would block on it
        for request in (
            GenerationRequest(model=TINY_LLAMA_NAME, prompt=huge),
            GenerationRequest(model=TINY_LLAMA_NAME, messages=[{"role": "user", "content": huge}]),
        ):
            thread = threading.Thread(target=submit, args=(request,))
            thread.start()
            thread.join(timeout=30)
            assert not thread.is_alive()
    assert len(outcomes) == 2 and all("characters long" in str(error) for error in outcomes)
    # A prompt within the bound is tokenized as before (and then judged in tokens).
    ok = GenerationRequest(model=TINY_LLAMA_NAME, prompt="x" * 10, max_tokens=1)
    assert engine.generate_batch([ok])[0].prompt_tokens == 10


def test_a_huge_classification_input_is_cut_to_what_the_model_reads(engine: ServingEngine) -> None:
    resident = engine.base_model(TINY_BERT_NAME)
    assert resident.max_text_chars is not None
    unit = "good movie, bad ending. "
    longer_than_read = unit * 200  # far beyond the tiny model's context already
    huge = unit * (resident.max_text_chars // len(unit) + 10)
    long_result, huge_result = engine.classify(TINY_BERT_NAME, None, [longer_than_read, huge])
    assert huge_result == long_result
