"""LoraSPLinear: init, exact seeded masks, frozen entries untouched by training, merge/unmerge."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from lorasp_core.adapters import (
    adapter_optimizer_state_entries,
    apply_lorasp,
    lorasp_layers,
    merge_adapters,
    trainable_parameters,
    unmerge_adapters,
)
from lorasp_core.config import LoraSPConfig
from lorasp_core.layers import LoraSPLinear, frozen_entry_indices, stable_seed


def _layer(
    freeze_ratio: float = 0.5, name: str = "blocks.0.q", in_f: int = 7, out_f: int = 5
) -> LoraSPLinear:
    torch.manual_seed(0)
    return LoraSPLinear(
        nn.Linear(in_f, out_f), name=name, r=3, alpha=6, freeze_ratio=freeze_ratio, mask_seed=11, init_seed=5
    )


@pytest.mark.parametrize("freeze_ratio", [0.0, 0.3, 0.5, 0.9])
def test_exactly_round_ratio_entries_are_frozen(freeze_ratio: float) -> None:
    layer = _layer(freeze_ratio)
    for matrix, numel in (("A", 3 * 7), ("B", 5 * 3)):
        frozen = getattr(layer, f"lora_{matrix}_frozen_index")
        trainable = getattr(layer, f"lora_{matrix}_trainable_index")
        assert frozen.numel() == round(freeze_ratio * numel)
        assert getattr(layer, f"lora_{matrix}_trainable").numel() == numel - frozen.numel()
        # Together they cover every entry exactly once.
        assert torch.equal(torch.cat([frozen, trainable]).sort().values, torch.arange(numel))


def test_masks_are_seeded_by_mask_seed_and_module_name() -> None:
    first, again = _layer(name="layers.0.q_proj"), _layer(name="layers.0.q_proj")
    other_name = _layer(name="layers.1.q_proj")
    assert torch.equal(first.lora_A_frozen_index, again.lora_A_frozen_index)
    assert not torch.equal(first.lora_A_frozen_index, other_name.lora_A_frozen_index)
    trainable, frozen = frozen_entry_indices(1000, 0.5, seed=1)
    assert frozen.numel() == 500 and not torch.equal(frozen, frozen_entry_indices(1000, 0.5, seed=2)[1])
    assert not torch.equal(trainable, torch.arange(500, 1000))  # random, not a block


def test_init_is_kaiming_uniform_a_zero_b_and_dense_views_reassemble() -> None:
    layer = _layer(0.5, in_f=64, out_f=16)
    bound = 1.0 / math.sqrt(64)  # kaiming_uniform(a=sqrt(5)) on fan_in=64
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.8 * bound
    assert torch.count_nonzero(layer.lora_B) == 0
    assert layer.lora_A.shape == (3, 64) and layer.lora_B.shape == (16, 3)
    flat_a = layer.lora_A.flatten()
    assert torch.equal(flat_a[layer.lora_A_trainable_index], layer.lora_A_trainable)
    assert torch.equal(flat_a[layer.lora_A_frozen_index], layer.lora_A_frozen)


def test_gradient_reaches_only_trainable_parameters() -> None:
    layer = _layer(0.5)
    with torch.no_grad():
        layer.lora_B_trainable.normal_()
    layer(torch.randn(4, 7)).sum().backward()
    assert layer.lora_A_trainable.grad is not None and layer.lora_B_trainable.grad is not None
    assert layer.lora_A_trainable.grad.abs().sum() > 0
    assert layer.base_layer.weight.grad is not None  # a bare layer; apply_lorasp freezes the base
    names = {name for name, p in layer.named_parameters()}
    assert "lora_A_frozen" not in names and "lora_B_frozen" not in names


def test_wrapped_model_equals_base_before_training(tiny_llama: nn.Module, token_batch: Callable) -> None:
    input_ids = token_batch(261)
    with torch.no_grad():
        expected = tiny_llama(input_ids=input_ids).logits
        apply_lorasp(tiny_llama, LoraSPConfig())
        actual = tiny_llama(input_ids=input_ids).logits
    assert len(list(lorasp_layers(tiny_llama))) == 2 * 4
    assert torch.equal(actual, expected)
    base_trainable = [n for n, p in tiny_llama.named_parameters() if p.requires_grad and "lora_" not in n]
    assert base_trainable == []


def test_trainable_parameters_counts_only_training_entries(tiny_bert: nn.Module) -> None:
    apply_lorasp(tiny_bert, LoraSPConfig(r=8, freeze_ratio=0.5))
    lora_entries = 2 * 3 * (8 * 64 + 64 * 8)  # layers * (query, key, value) * (A + B)
    head_entries = 64 * 3 + 3
    assert trainable_parameters(tiny_bert) == lora_entries // 2 + head_entries
    assert all(p.requires_grad for p in tiny_bert.classifier.parameters())


def test_frozen_entries_bit_identical_after_bf16_adamw_with_decay_and_clipping(
    tiny_llama: nn.Module, train_steps: Callable
) -> None:
    apply_lorasp(tiny_llama, LoraSPConfig(r=4, freeze_ratio=0.5))
    before = {
        name: (layer.lora_A.detach().clone(), layer.lora_B.detach().clone())
        for name, layer in lorasp_layers(tiny_llama)
    }
    train_steps(tiny_llama, steps=3, lr=5e-2, weight_decay=0.5, bf16=True)
    for name, layer in lorasp_layers(tiny_llama):
        a_before, b_before = before[name]
        pairs = ((a_before, layer.lora_A, "A"), (b_before, layer.lora_B, "B"))
        for dense_before, dense_after, matrix in pairs:
            frozen = getattr(layer, f"lora_{matrix}_frozen_index")
            trainable = getattr(layer, f"lora_{matrix}_trainable_index")
            flat_before, flat_after = dense_before.flatten(), dense_after.detach().flatten()
            assert torch.equal(flat_before[frozen].view(torch.int32), flat_after[frozen].view(torch.int32))
            changed = (flat_before[trainable] != flat_after[trainable]).float().mean()
            assert changed > 0.9, f"{name}.{matrix}: only {changed:.0%} of trainable entries moved"


def test_optimizer_state_is_half_of_plain_lora(tiny_llama: nn.Module, train_steps: Callable) -> None:
    from lorasp_core.models import tiny_random_llama

    plain = apply_lorasp(tiny_random_llama(seed=0), LoraSPConfig(freeze_ratio=0.0))
    sparse = apply_lorasp(tiny_llama, LoraSPConfig(freeze_ratio=0.5))
    plain_entries = adapter_optimizer_state_entries(train_steps(plain, steps=1), plain)
    sparse_entries = adapter_optimizer_state_entries(train_steps(sparse, steps=1), sparse)
    assert plain_entries == 2 * 2 * 4 * (8 * 64 + 64 * 8)  # exp_avg + exp_avg_sq, 8 layers
    assert sparse_entries * 2 == plain_entries


def test_merge_and_unmerge(tiny_llama: nn.Module, train_steps: Callable, token_batch: Callable) -> None:
    apply_lorasp(tiny_llama, LoraSPConfig())
    train_steps(tiny_llama, steps=2)
    input_ids = token_batch(261)
    q_proj = tiny_llama.model.layers[0].self_attn.q_proj
    base_weight = q_proj.base_layer.weight.detach().clone()
    with torch.no_grad():
        unmerged = tiny_llama(input_ids=input_ids).logits
        merge_adapters(tiny_llama)
        assert q_proj.merged and not torch.equal(q_proj.base_layer.weight, base_weight)
        merged = tiny_llama(input_ids=input_ids).logits
        unmerge_adapters(tiny_llama)
        again = tiny_llama(input_ids=input_ids).logits
    assert not q_proj.merged
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    torch.testing.assert_close(again, unmerged, atol=1e-5, rtol=0)
    torch.testing.assert_close(q_proj.base_layer.weight, base_weight, atol=1e-6, rtol=0)
    assert q_proj.get_delta_weight().shape == base_weight.shape


def test_merge_refuses_non_finite_weights() -> None:
    layer = _layer(0.5)
    with torch.no_grad():
        layer.lora_B_trainable.fill_(float("inf"))
    weight = layer.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match="NaN/inf"):
        layer.merge()
    assert not layer.merged and torch.equal(layer.base_layer.weight, weight)


def test_gpt2_conv1d_is_wrapped_and_merges(tiny_gpt2: nn.Module, token_batch: Callable) -> None:
    input_ids = token_batch(64)
    with torch.no_grad():
        expected = tiny_gpt2(input_ids=input_ids).logits
    apply_lorasp(tiny_gpt2, LoraSPConfig(r=4))
    c_attn = tiny_gpt2.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, LoraSPLinear) and c_attn.fan_in_fan_out
    assert (c_attn.in_features, c_attn.out_features) == (32, 96)
    with torch.no_grad():
        assert torch.equal(tiny_gpt2(input_ids=input_ids).logits, expected)
        c_attn.lora_B_trainable.normal_()
        unmerged = tiny_gpt2(input_ids=input_ids).logits
        c_attn.merge()
        merged = tiny_gpt2(input_ids=input_ids).logits
    assert not torch.allclose(unmerged, expected)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)


def test_masks_do_not_depend_on_the_process_hash_seed() -> None:
    """Python's hash() of a str changes per process; the masks must not (resume, load_adapter)."""
    import os
    import subprocess
    import sys

    script = (
        "from lorasp_core.layers import frozen_entry_indices as f, stable_seed as s; "
        "print(f(50, 0.5, s('mask', 3, 'layers.0.q_proj', 'A'))[1].tolist())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"},
        ).stdout.strip()
        for hash_seed in ("1", "2")
    }
    here = frozen_entry_indices(50, 0.5, stable_seed("mask", 3, "layers.0.q_proj", "A"))[1].tolist()
    assert outputs == {str(here)}
