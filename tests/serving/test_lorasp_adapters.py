"""Adapters written by lorasp_core.adapters.save_adapter (LoRA-SP) serve exactly like the trained model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from serving_fixtures import TINY_LLAMA_NAME, make_tiny_tokenizer, tiny_random_llama

from lorasp_core.adapters import apply_lorasp, save_adapter
from lorasp_core.config import LoraSPConfig
from lorasp_core.serving import GenerationRequest, ServingEngine

EngineFactory = Callable[..., ServingEngine]


def test_lorasp_saved_adapter_matches_the_wrapped_model(make_engine: EngineFactory, tmp_path: Path) -> None:
    model = apply_lorasp(tiny_random_llama(seed=0), LoraSPConfig(r=8, alpha=16.0, mask_seed=3))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B_trainable" in name:  # B starts at zero; only its trainable half moves, as in training
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    model.eval()
    save_adapter(model, tmp_path / "sp", base_model_name_or_path=TINY_LLAMA_NAME, task_type="causal-lm")

    engine = make_engine()
    info = engine.load_adapter("sp", tmp_path / "sp", TINY_LLAMA_NAME)
    assert info.rank == 8
    prompt = "LoRA-SP freezes half"
    ids = make_tiny_tokenizer()(prompt, return_tensors="pt")
    with torch.inference_mode():
        expected = model(**ids).logits[0, -1]
        bare = tiny_random_llama(seed=0)(**ids).logits[0, -1]
        slots = torch.tensor([info.slot])
        with engine.active_slots(TINY_LLAMA_NAME, slots) as resident:
            served = resident.model(**ids).logits[0, -1]
    torch.testing.assert_close(served, expected, atol=1e-4, rtol=0)
    assert (bare - expected).abs().max() > 1e-2

    request = GenerationRequest(
        model=TINY_LLAMA_NAME, adapter_id="sp", prompt=prompt, max_tokens=20, ignore_eos=True
    )
    result = engine.generate_batch([request])[0]
    assert result.completion_tokens == 20 and result.finish_reason == "length"
