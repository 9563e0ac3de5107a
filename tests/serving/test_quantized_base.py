"""An adapter trained on an int8 base is served on an int8 base: the engine keeps one resident per
(base model, quantization), built by `quantizing_base_loader`, and serves the training-time logits."""

from __future__ import annotations

from pathlib import Path

import torch
from serving_fixtures import TINY_LLAMA_NAME, load_tiny, make_tiny_tokenizer, tiny_random_llama

from lorasp_core.adapters import apply_lorasp, save_adapter
from lorasp_core.config import LoraSPConfig
from lorasp_core.data import ChatExample, Example
from lorasp_core.quantization import is_quantized, quantizing_base_loader, resident_name
from lorasp_core.serving import ServingEngine
from lorasp_core.trainer import TrainConfig, train


def _chat(n: int) -> list[Example]:
    return [
        ChatExample(
            messages=(
                {"role": "user", "content": f"say {i}"},
                {"role": "assistant", "content": f"{i * 7}"},
            )
        )
        for i in range(n)
    ]


def test_an_int8_trained_adapter_serves_the_training_time_logits(tmp_path: Path) -> None:
    model = apply_lorasp(tiny_random_llama(seed=0), LoraSPConfig(r=8, alpha=16.0, mask_seed=1))
    config = TrainConfig(
        task="causal-lm",
        epochs=3,
        batch_size=4,
        learning_rate=2e-2,
        mixed_precision="no",
        base_quantization="int8",
    )
    train(config, model, make_tiny_tokenizer(), _chat(8))
    model.eval()
    save_adapter(model, tmp_path / "int8", base_model_name_or_path=TINY_LLAMA_NAME, task_type="causal-lm")

    engine = ServingEngine(quantizing_base_loader(load_tiny))
    try:
        quantized_name = resident_name(TINY_LLAMA_NAME, "int8")
        info = engine.load_adapter("int8-adapter", tmp_path / "int8", quantized_name)
        ids = make_tiny_tokenizer()("say 3", return_tensors="pt")
        with torch.inference_mode():
            expected = model(**ids).logits[0, -1]
            with engine.active_slots(quantized_name, torch.tensor([info.slot])) as resident:
                served = resident.model(**ids).logits[0, -1]
                assert any(is_quantized(p) for p in resident.model.parameters())
            # the same adapter on the unquantized resident (a second, separate one) is not what trained
            engine.load_adapter("on-fp32", tmp_path / "int8", TINY_LLAMA_NAME)
            plain = engine.base_model(TINY_LLAMA_NAME)
            assert plain is not engine.base_model(quantized_name)
            assert not any(is_quantized(p) for p in plain.model.parameters())
            slot = engine.adapter_info("on-fp32").slot
            with engine.active_slots(TINY_LLAMA_NAME, torch.tensor([slot])) as resident:
                on_fp32 = resident.model(**ids).logits[0, -1]
        torch.testing.assert_close(served, expected, atol=1e-4, rtol=0)
        assert (on_fp32 - expected).abs().max() > 1e-4  # int8 rounding shows: the base matters
    finally:
        engine.close()
