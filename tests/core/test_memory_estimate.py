"""The admission estimate: its adapter part matches what apply_lorasp really allocates, and it moves
the right way with batch, sequence length, checkpointing and the freeze ratio."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from lorasp_core.config import LoraSPConfig
from lorasp_core.memory_estimate import TrainingShape, estimate_training_memory
from lorasp_core.models.skeleton import model_skeleton
from lorasp_core.models.tiny import TINY_LLAMA_NAME, tiny_random_llama
from lorasp_core.wrapping import apply_lorasp, lorasp_layers


def _meta_llama(layers: int) -> nn.Module:
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4
    )
    with torch.device("meta"):
        return LlamaForCausalLM(config)


SHAPE = TrainingShape(batch_size=8, sequence_length=128)


def test_the_adapter_part_counts_what_apply_lorasp_allocates_plus_gradients_and_adam() -> None:
    lora = LoraSPConfig(r=4, alpha=8.0)
    model = apply_lorasp(tiny_random_llama(), lora)
    stored = 0  # parameters + frozen entries + index buffers, as allocated
    trainable = 0
    dense = 0
    for _, layer in lorasp_layers(model):
        for tensor in (*layer.parameters(recurse=False), *layer.buffers(recurse=False)):
            stored += tensor.numel() * tensor.element_size()
        trainable += sum(p.numel() for p in layer.parameters(recurse=False))
        dense += layer.lora_A.numel() + layer.lora_B.numel()
    expected = stored + 12 * trainable + 4 * dense  # fp32 grads + two Adam moments; dense A, B per forward
    estimate = estimate_training_memory(model_skeleton(TINY_LLAMA_NAME), lora, SHAPE)
    assert estimate.adapter == expected


def test_the_estimate_grows_with_tokens_and_shrinks_with_checkpointing_and_bf16() -> None:
    skeleton, lora = model_skeleton(TINY_LLAMA_NAME), LoraSPConfig()
    base = estimate_training_memory(skeleton, lora, SHAPE)
    longer = estimate_training_memory(skeleton, lora, replace(SHAPE, sequence_length=256))
    wider = estimate_training_memory(skeleton, lora, replace(SHAPE, batch_size=16))
    deep = _meta_llama(layers=8)  # checkpointing keeps two layers' full sets: it pays from ~3 layers on
    checkpointed = estimate_training_memory(deep, lora, replace(SHAPE, gradient_checkpointing=True))
    plain = estimate_training_memory(deep, lora, SHAPE)
    bf16 = estimate_training_memory(skeleton, lora, replace(SHAPE, compute_dtype="bfloat16"))
    assert longer.activations > 2 * base.activations  # attention is quadratic in the length
    assert wider.activations == 2 * base.activations and wider.logits == 2 * base.logits
    assert checkpointed.activations < plain.activations / 2
    assert bf16.activations * 2 == base.activations
    assert base.weights == 4 * sum(p.numel() for p in skeleton.parameters())
    assert base.total == base.weights + base.adapter + base.activations + base.logits + base.runtime


def test_freezing_half_the_entries_costs_less_adapter_memory_than_plain_lora() -> None:
    skeleton = model_skeleton(TINY_LLAMA_NAME)
    lorasp = estimate_training_memory(skeleton, LoraSPConfig(freeze_ratio=0.5), SHAPE).adapter
    lora = estimate_training_memory(skeleton, LoraSPConfig(freeze_ratio=0.0), SHAPE).adapter
    assert lorasp < lora
