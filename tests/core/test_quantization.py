"""A quantized frozen base: int8 weight-only (torchao) on CPU, forward and backward through it, its memory,
the layers it leaves alone, and nf4's typed refusal without CUDA (training under int8 beside every
precision: tests/core/test_train.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from lorasp_core.adapters import apply_lorasp
from lorasp_core.config import LoraSPConfig
from lorasp_core.data import ChatExample, Example
from lorasp_core.layers import LoraSPLinear
from lorasp_core.memory_estimate import TrainingShape, estimate_training_memory
from lorasp_core.models import make_tiny_tokenizer, tiny_random_bert, tiny_random_llama
from lorasp_core.models.skeleton import model_skeleton
from lorasp_core.quantization import (
    QuantizationUnavailableError,
    check_quantization,
    held_bytes,
    is_quantized,
    linear_weight,
    parse_resident_name,
    quantizable_linear_names,
    quantize_frozen_base,
    resident_name,
)
from lorasp_core.trainer import TrainConfig, evaluate, train

CPU = torch.device("cpu")


def _wrapped_llama() -> nn.Module:
    return apply_lorasp(tiny_random_llama(seed=0), LoraSPConfig(r=4, alpha=8.0, target_modules="all-linear"))


def _dequantized(weight: torch.Tensor) -> torch.Tensor:
    return weight.dequantize()  # type: ignore[no-any-return]  # torchao's Int8Tensor


def test_int8_base_layer_forward_and_backward_to_input_match_its_dequantized_weights() -> None:
    torch.manual_seed(0)
    layer = LoraSPLinear(nn.Linear(64, 48), name="proj", r=8, alpha=16)
    with torch.no_grad():
        layer.lora_B_trainable.normal_()
    layer.base_layer.requires_grad_(False)
    full_weight = layer.base_layer.weight.detach().clone()
    assert quantize_frozen_base(layer, "int8").layers == 1
    weight = layer.base_layer.weight
    assert is_quantized(weight) and weight.dtype == torch.float32 and not weight.requires_grad
    dequantized = _dequantized(weight)
    assert 0 < (dequantized - full_weight).abs().max() <= full_weight.abs().max() / 127  # per-channel step

    x = torch.randn(4, 64, requires_grad=True)
    layer(x).square().sum().backward()
    reference = LoraSPLinear(nn.Linear(64, 48), name="proj", r=8, alpha=16)
    reference.load_state_dict({**layer.state_dict(), "base_layer.weight": dequantized}, strict=True)
    x_reference = x.detach().clone().requires_grad_(True)
    reference(x_reference).square().sum().backward()
    assert x.grad is not None and x_reference.grad is not None
    torch.testing.assert_close(x.grad, x_reference.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        layer.lora_A_trainable.grad, reference.lora_A_trainable.grad, rtol=1e-4, atol=1e-4
    )
    assert layer.lora_A_trainable.dtype == layer.lora_A_frozen.dtype == torch.float32


def test_int8_linears_take_a_quarter_of_their_fp32_bytes_and_the_rest_is_untouched() -> None:
    model = _wrapped_llama()
    names = quantizable_linear_names(model)
    # every wrapped base layer; the LM head is an output layer (often tied to the input embedding)
    assert names and all(name.endswith(".base_layer") for name in names)
    weights = [model.get_submodule(name).weight for name in names]
    full = held_bytes(weights)
    others = {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if not name.endswith(tuple(f"{n}.weight" for n in names))
    }
    assert quantize_frozen_base(model, "int8").layers == len(names)
    quantized = held_bytes(model.get_submodule(name).weight for name in names)
    # int8 data plus one fp32 scale and zero point per output row of 64 inputs: a quarter and a little
    assert 0.25 <= quantized / full <= 0.25 + 2 * 4 / 64 / 4, quantized / full
    for name, before in others.items():  # embeddings, norms, LM head, adapters: as they were
        after = model.get_parameter(name)
        assert not is_quantized(after) and torch.equal(after, before), name
    assert quantize_frozen_base(model, "int8").layers == 0  # already quantized: nothing to do


def test_a_classifiers_trained_head_stays_unquantized() -> None:
    model = apply_lorasp(tiny_random_bert(num_labels=3, seed=0), LoraSPConfig(r=4, alpha=8.0))
    quantize_frozen_base(model, "int8")
    head = [name for name, p in model.named_parameters() if p.requires_grad and "lora_" not in name]
    assert head and all(not is_quantized(model.get_parameter(name)) for name in head)
    assert any(is_quantized(p) for p in model.parameters())


def _chat(n: int) -> list[Example]:
    return [
        ChatExample(
            messages=(
                {"role": "user", "content": f"add {i} and {i % 5}"},
                {"role": "assistant", "content": f"{i + i % 5}"},
            )
        )
        for i in range(n)
    ]


def test_a_few_steps_on_an_int8_base_learn_like_the_fp32_base() -> None:
    data, tokenizer = _chat(8), make_tiny_tokenizer()
    losses: dict[str, tuple[float, float]] = {}
    for quantization in ("none", "int8"):
        model = _wrapped_llama()
        config = TrainConfig(
            task="causal-lm",
            epochs=6,
            batch_size=4,
            learning_rate=2e-2,
            mixed_precision="no",
            base_quantization=quantization,  # type: ignore[arg-type]
        )
        before = evaluate(model, tokenizer, data, config)["loss"]
        result = train(config, model, tokenizer, data)
        assert result.base_quantization == quantization and result.steps == 12
        losses[quantization] = (before, evaluate(model, tokenizer, data, config)["loss"])
    for quantization, (before, after) in losses.items():
        assert after < before - 0.5, (quantization, before, after)
    # int8 rounding moves the tiny model's loss a little, never the learning
    assert losses["int8"][0] == pytest.approx(losses["none"][0], rel=0.02)
    assert losses["int8"][1] == pytest.approx(losses["none"][1], rel=0.1)


def test_nf4_without_cuda_is_a_typed_error_naming_the_option() -> None:
    with pytest.raises(QuantizationUnavailableError, match="base_quantization 'nf4'") as raised:
        check_quantization("nf4", CPU)
    assert raised.value.option == "base_quantization" and "cuda" in raised.value.reason
    config = TrainConfig(task="causal-lm", base_quantization="nf4", mixed_precision="no")
    model = _wrapped_llama()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(QuantizationUnavailableError):
        train(config, model, make_tiny_tokenizer(), _chat(4))
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # refused before work
    with pytest.raises(ValueError, match="base_quantization"):
        TrainConfig(task="causal-lm", base_quantization="int4")  # type: ignore[arg-type]


def test_resident_names_round_trip() -> None:
    assert resident_name("smollm2", "none") == "smollm2"
    assert parse_resident_name(resident_name("my.model-1", "int8")) == ("my.model-1", "int8")
    assert parse_resident_name("smollm2") == ("smollm2", "none")


def test_the_estimate_counts_int8_linears_at_what_the_quantized_model_holds() -> None:
    skeleton = model_skeleton("tiny-random-llama")
    lora = LoraSPConfig(r=4, alpha=8.0, target_modules="all-linear")
    shape = TrainingShape(batch_size=2, sequence_length=32)
    full = estimate_training_memory(skeleton, lora, shape)
    int8 = estimate_training_memory(skeleton, lora, replace(shape, base_quantization="int8"))
    nf4 = estimate_training_memory(skeleton, lora, replace(shape, base_quantization="nf4"))
    assert nf4.weights < int8.weights < full.weights
    assert (int8.adapter, int8.activations) == (full.adapter, full.activations)

    model = _wrapped_llama()
    quantize_frozen_base(model, "int8")
    adapters = [p for name, p in model.named_parameters() if "lora_" in name]
    measured = held_bytes(model.parameters()) - held_bytes(adapters)
    assert int8.weights == pytest.approx(measured, rel=0.05)


def test_the_backward_keeps_no_full_precision_copy_of_an_int8_weight() -> None:
    model = _wrapped_llama()
    quantize_frozen_base(model, "int8")
    weight_shapes = {tuple(linear_weight(model, name).shape) for name in quantizable_linear_names(model)}
    saved: list[tuple[int, ...]] = []

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(tensor.shape))
        return tensor

    input_ids = torch.arange(5, 12).unsqueeze(0)  # 7 tokens: no activation has a weight's 2-D shape
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    assert saved and not weight_shapes & set(saved)
    loss.backward()
    assert all(p.grad is not None for name, p in model.named_parameters() if "lora_B_trainable" in name)
