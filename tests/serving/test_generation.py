"""Mixed-adapter batched generation matches serving alone, PEFT's PeftModel, and the bare base model."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from serving_fixtures import TINY_LLAMA_NAME, make_llama_adapter, make_tiny_tokenizer, tiny_random_llama
from torch import nn

from lorasp_core.serving import GenerationRequest, ServingEngine

EngineFactory = Callable[..., ServingEngine]
PROMPTS = ["Hello there, how are you?", "hi", "The quick brown fox", "x"]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def peft_models(adapter_dir: Path) -> dict[str, nn.Module]:
    """Two adapters with different ranks and targets: zero-padding to the larger rank must be exact."""
    return {
        "a1": make_llama_adapter(adapter_dir / "a1", seed=1, r=4),
        "a2": make_llama_adapter(adapter_dir / "a2", seed=2, r=8, targets=["q_proj", "v_proj", "gate_proj"]),
    }


@pytest.fixture
def engine(make_engine: EngineFactory, adapter_dir: Path, peft_models: dict[str, nn.Module]) -> ServingEngine:
    engine = make_engine(max_adapters=4, batch_window_ms=20)
    for adapter_id in peft_models:
        engine.load_adapter(adapter_id, adapter_dir / adapter_id, TINY_LLAMA_NAME)
    return engine


MIX: list[tuple[str | None, str]] = [
    ("a1", PROMPTS[0]),
    (None, PROMPTS[1]),
    ("a2", PROMPTS[2]),
    ("a1", PROMPTS[3]),
]


def request(adapter_id: str | None, prompt: str, **kwargs: object) -> GenerationRequest:
    options: dict[str, object] = {"max_tokens": MAX_TOKENS} | kwargs
    return GenerationRequest(model=TINY_LLAMA_NAME, adapter_id=adapter_id, prompt=prompt, **options)  # type: ignore[arg-type]


def mixed_prefill_logits(engine: ServingEngine, rows: list[tuple[str | None, str]]) -> torch.Tensor:
    """Last-prompt-token logits of a left-padded mixed batch, each row through its own slot."""
    tokenizer = make_tiny_tokenizer()
    ids = [tokenizer(prompt)["input_ids"] for _, prompt in rows]
    width = max(len(i) for i in ids)
    input_ids = torch.tensor([[0] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    slots = torch.tensor([engine.slot_of(a) if a else 0 for a, _ in rows])
    with torch.inference_mode(), engine.active_slots(TINY_LLAMA_NAME, slots) as resident:
        logits = resident.model(
            input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
        ).logits
    return logits[:, -1, :]


def reference_logits(model: nn.Module, prompt: str) -> torch.Tensor:
    ids = make_tiny_tokenizer()(prompt, return_tensors="pt")
    with torch.inference_mode():
        return model(**ids).logits[0, -1, :]


def reference_tokens(model: nn.Module, prompt: str) -> list[int]:
    ids = make_tiny_tokenizer()(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False)
    return out[0, ids["input_ids"].shape[1] :].tolist()


def test_mixed_batch_logits_match_peft_and_bare_base(
    engine: ServingEngine, peft_models: dict[str, nn.Module]
) -> None:
    bare = tiny_random_llama(seed=0)
    batched = mixed_prefill_logits(engine, MIX)
    for row, (adapter_id, prompt) in enumerate(MIX):
        expected = reference_logits(peft_models[adapter_id] if adapter_id else bare, prompt)
        torch.testing.assert_close(batched[row], expected, atol=1e-4, rtol=0)
        if adapter_id:  # the adapter really changes the output: the comparison above is meaningful
            assert (reference_logits(bare, prompt) - expected).abs().max() > 1e-2


def test_mixed_batch_tokens_match_alone_and_peft(
    engine: ServingEngine, peft_models: dict[str, nn.Module]
) -> None:
    bare = tiny_random_llama(seed=0)
    mixed = engine.generate_batch([request(a, p) for a, p in MIX])
    for (adapter_id, prompt), result in zip(MIX, mixed, strict=True):
        alone = engine.generate_batch([request(adapter_id, prompt)])[0]
        assert result.token_ids == alone.token_ids and result.text == alone.text
        assert result.token_ids == reference_tokens(peft_models[adapter_id] if adapter_id else bare, prompt)
        assert result.prompt_tokens == len(make_tiny_tokenizer()(prompt)["input_ids"])
    assert mixed[0].token_ids != engine.generate_batch([request(None, MIX[0][1])])[0].token_ids


def test_streaming_chunks_concatenate_to_full_text(engine: ServingEngine) -> None:
    full = engine.generate_batch([request("a1", PROMPTS[0])])[0]
    chunks = list(engine.generate(request("a1", PROMPTS[0])))
    assert "".join(c.text_delta for c in chunks) == full.text
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == full.finish_reason
    assert chunks[-1].token_count == full.completion_tokens
    assert [c.token_count for c in chunks] == sorted(c.token_count for c in chunks)


def test_stop_string_cuts_text_in_batch_and_stream(engine: ServingEngine) -> None:
    full = engine.generate_batch([request("a2", PROMPTS[2])])[0].text
    stop = full[3:5]
    cut = full[: full.index(stop)]
    result = engine.generate_batch([request("a2", PROMPTS[2], stop=[stop])])[0]
    assert (result.text, result.finish_reason) == (cut, "stop")
    assert engine.generate(request("a2", PROMPTS[2], stop=[stop])).text() == cut


def test_max_tokens_and_length_finish(engine: ServingEngine) -> None:
    result = engine.generate_batch([request("a1", PROMPTS[0], max_tokens=3)])[0]
    assert (result.completion_tokens, result.finish_reason) == (3, "length")


def test_sampling_is_seeded_and_tiny_top_p_is_greedy(engine: ServingEngine) -> None:
    sampled = [
        request("a1", PROMPTS[0], temperature=1.0, seed=7),
        request("a2", PROMPTS[1], temperature=1.0, seed=7),
    ]
    first = [r.token_ids for r in engine.generate_batch(sampled)]
    assert first == [engine.generate_batch([r])[0].token_ids for r in sampled]
    nucleus = engine.generate_batch([request("a1", PROMPTS[0], temperature=1.0, top_p=1e-6, seed=3)])[0]
    assert nucleus.token_ids == engine.generate_batch([request("a1", PROMPTS[0])])[0].token_ids


def test_chat_messages_use_the_adapter_chat_template(engine: ServingEngine, adapter_dir: Path) -> None:
    messages = [{"role": "user", "content": "hello"}]
    chat = GenerationRequest(model=TINY_LLAMA_NAME, adapter_id="a1", messages=messages, max_tokens=2)
    default_prompt_tokens = engine.generate_batch([chat])[0].prompt_tokens
    (adapter_dir / "a1" / "lorasp.json").write_text(
        '{"chat_template": "USER SAYS: {{ messages[0].content }}"}'
    )
    try:
        engine.unload_adapter("a1")
        engine.load_adapter("a1", adapter_dir / "a1", TINY_LLAMA_NAME)
        assert engine.generate_batch([chat])[0].prompt_tokens == len("USER SAYS: hello")
    finally:
        (adapter_dir / "a1" / "lorasp.json").unlink()
    assert default_prompt_tokens == len(
        make_tiny_tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=True)[
            "input_ids"
        ]
    )


def test_concurrent_requests_are_batched_together(engine: ServingEngine) -> None:
    expected = [engine.generate_batch([request(a, p)])[0].text for a, p in MIX]
    texts: dict[int, str] = {}

    def client(index: int) -> None:
        adapter_id, prompt = MIX[index]
        texts[index] = engine.generate(request(adapter_id, prompt)).text()

    with engine.scheduler_paused():
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(MIX))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60  # a safety net against hanging, not a timing assertion
        while engine.pending_requests() < len(MIX) and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=120)
    assert engine.batch_sizes == [len(MIX)]
    assert [texts[i] for i in range(len(MIX))] == expected
    assert engine.adapter_info("a1").requests >= 2


def test_bad_requests_fail_before_queueing(engine: ServingEngine) -> None:
    with pytest.raises(ValueError, match="exactly one of messages and prompt"):
        engine.generate(GenerationRequest(model=TINY_LLAMA_NAME, max_tokens=2))
    with pytest.raises(LookupError):
        engine.generate(request("no-such-adapter", "hi"))
    with pytest.raises(ValueError, match="exceeds"):
        engine.generate(request("a1", "hi", max_tokens=10_000))
    assert engine.pending_requests() == 0 and engine.adapter_info("a1").requests == 0


def test_adapter_in_use_is_not_evicted_and_unload_waits(engine: ServingEngine, adapter_dir: Path) -> None:
    with engine.scheduler_paused():
        stream = engine.generate(request("a1", PROMPTS[0]))  # queued: a1 is now in use
        engine.unload_adapter("a1")
        assert "a1" in {a.adapter_id for a in engine.loaded_adapters()}  # still needed by the queued request
        with pytest.raises(LookupError):
            engine.generate(request("a1", "new requests are refused"))
    assert stream.text() != ""
    assert "a1" not in {a.adapter_id for a in engine.loaded_adapters()}
