"""Saved adapters are PEFT directories: PEFT loads them with the same logits, and we load PEFT's."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

from lorasp_core.adapters import (
    apply_lorasp,
    load_adapter,
    lorasp_layers,
    read_adapter_metadata,
    save_adapter,
)
from lorasp_core.config import LoraSPConfig
from lorasp_core.models import tiny_random_bert, tiny_random_llama

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _peft_reference_keys(model: nn.Module, targets: tuple[str, ...], task_type: str, tmp: Path) -> dict:
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=list(targets), task_type=task_type)
    )
    peft_model.save_pretrained(tmp)
    return {key: tuple(value.shape) for key, value in load_file(tmp / "adapter_model.safetensors").items()}


def _our_keys(path: Path) -> dict:
    return {key: tuple(value.shape) for key, value in load_file(path / "adapter_model.safetensors").items()}


def test_key_names_are_exactly_peft_s(tmp_path: Path) -> None:
    llama_reference = _peft_reference_keys(tiny_random_llama(), LLAMA_TARGETS, "CAUSAL_LM", tmp_path / "p1")
    ours = save_adapter(
        apply_lorasp(tiny_random_llama(), LoraSPConfig()),
        tmp_path / "o1",
        base_model_name_or_path="tiny-random-llama",
        task_type="causal-lm",
    )
    assert _our_keys(ours) == llama_reference

    bert_reference = _peft_reference_keys(
        tiny_random_bert(3), ("query", "key", "value"), "SEQ_CLS", tmp_path / "p2"
    )
    ours = save_adapter(
        apply_lorasp(tiny_random_bert(3), LoraSPConfig()),
        tmp_path / "o2",
        base_model_name_or_path="tiny-random-bert",
        task_type="seq-cls",
    )
    assert _our_keys(ours) == bert_reference
    assert "base_model.model.classifier.weight" in bert_reference


def test_causal_lm_adapter_loads_in_peft_with_same_logits(
    tmp_path: Path, train_steps: Callable, token_batch: Callable
) -> None:
    ours = apply_lorasp(tiny_random_llama(), LoraSPConfig(r=4, alpha=8, mask_seed=3))
    train_steps(ours, steps=3)
    assert all(torch.count_nonzero(layer.lora_B) > 0 for _, layer in lorasp_layers(ours))
    path = save_adapter(
        ours,
        tmp_path / "adapter",
        base_model_name_or_path="tiny-random-llama",
        task_type="causal-lm",
        chat_template="{{ x }}",
        label_names=None,
        training_summary={"steps": 3},
    )
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["bias"]) == (4, 8.0, "none")
    assert sorted(config["target_modules"]) == sorted(LLAMA_TARGETS)
    assert config["base_model_name_or_path"] == "tiny-random-llama" and config["fan_in_fan_out"] is False

    peft_model = PeftModel.from_pretrained(tiny_random_llama(), path).eval()
    input_ids = token_batch(261)
    with torch.no_grad():
        expected, actual = ours(input_ids=input_ids).logits, peft_model(input_ids=input_ids).logits
        base = tiny_random_llama()(input_ids=input_ids).logits
    assert not torch.allclose(expected, base, atol=1e-4)  # the adapter really changes the output
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_sequence_classifier_with_trained_head_loads_in_peft(
    tmp_path: Path, train_steps: Callable, token_batch: Callable
) -> None:
    ours = apply_lorasp(tiny_random_bert(3), LoraSPConfig(r=4))
    head_before = ours.classifier.weight.detach().clone()
    train_steps(ours, steps=3, labels=torch.tensor([0, 2]))
    assert not torch.equal(ours.classifier.weight, head_before)
    path = save_adapter(
        ours,
        tmp_path / "cls",
        base_model_name_or_path="tiny-random-bert",
        task_type="seq-cls",
        label_names=["a", "b", "c"],
    )
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["classifier"]

    peft_model = PeftModel.from_pretrained(tiny_random_bert(3), path).eval()
    input_ids = token_batch(261)
    with torch.no_grad():
        expected, actual = ours(input_ids=input_ids).logits, peft_model(input_ids=input_ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_load_adapter_restores_weights_masks_and_metadata(
    tmp_path: Path, train_steps: Callable, token_batch: Callable
) -> None:
    ours = apply_lorasp(tiny_random_bert(3), LoraSPConfig(r=4, freeze_ratio=0.25, mask_seed=9, init_seed=4))
    train_steps(ours, steps=2, labels=torch.tensor([1, 2]))
    path = save_adapter(
        ours,
        tmp_path / "a",
        base_model_name_or_path="tiny-random-bert",
        task_type="seq-cls",
        label_names=["x", "y", "z"],
        chat_template=None,
        training_summary={"loss": 1.5},
    )
    metadata = read_adapter_metadata(path)
    assert metadata.is_lorasp and metadata.task == "seq-cls"
    assert (metadata.freeze_ratio, metadata.mask_seed, metadata.init_seed, metadata.r) == (0.25, 9, 4, 4)
    assert metadata.label_names == ["x", "y", "z"] and metadata.training_summary == {"loss": 1.5}
    assert json.loads((path / "lorasp.json").read_text())["task"] == "seq-cls"

    fresh = tiny_random_bert(3)
    assert load_adapter(fresh, path).label_names == ["x", "y", "z"]
    input_ids = token_batch(261)
    with torch.no_grad():
        torch.testing.assert_close(
            fresh(input_ids=input_ids).logits, ours(input_ids=input_ids).logits, atol=1e-6, rtol=0
        )
    for (_, loaded), (_, original) in zip(lorasp_layers(fresh), lorasp_layers(ours), strict=True):
        assert torch.equal(loaded.lora_A_frozen_index, original.lora_A_frozen_index)
        assert torch.equal(loaded.lora_B_trainable, original.lora_B_trainable)
        assert loaded.lora_B_trainable.requires_grad
    assert fresh.classifier.weight.requires_grad


def test_peft_saved_directory_loads_with_equal_logits(tmp_path: Path, token_batch: Callable) -> None:
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(tiny_random_llama(), peft_config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    peft_model.save_pretrained(tmp_path / "peft")
    metadata = read_adapter_metadata(tmp_path / "peft")
    assert not metadata.is_lorasp and metadata.freeze_ratio == 0.0

    ours = tiny_random_llama()
    load_adapter(ours, tmp_path / "peft")
    input_ids = token_batch(261)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(input_ids=input_ids).logits, peft_model(input_ids=input_ids).logits, atol=1e-5, rtol=0
        )


def test_gpt2_conv1d_adapter_round_trips_through_peft(
    tmp_path: Path, tiny_gpt2: nn.Module, train_steps: Callable, token_batch: Callable
) -> None:
    reference_state = {k: v.clone() for k, v in tiny_gpt2.state_dict().items()}
    ours = apply_lorasp(tiny_gpt2, LoraSPConfig(r=4))
    train_steps(ours, steps=2)
    path = save_adapter(ours, tmp_path / "g", base_model_name_or_path="tiny-gpt2", task_type="causal-lm")
    assert json.loads((path / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    from transformers import GPT2LMHeadModel

    fresh = GPT2LMHeadModel(tiny_gpt2.config)
    fresh.load_state_dict(reference_state)
    peft_model = PeftModel.from_pretrained(fresh.eval(), path).eval()
    input_ids = token_batch(64)
    with torch.no_grad():
        torch.testing.assert_close(
            peft_model(input_ids=input_ids).logits, ours(input_ids=input_ids).logits, atol=1e-5, rtol=0
        )


def test_broken_adapter_directories_raise_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="adapter_config.json is missing"):
        read_adapter_metadata(tmp_path)
    path = save_adapter(
        apply_lorasp(tiny_random_llama(), LoraSPConfig(r=2)),
        tmp_path / "x",
        base_model_name_or_path="tiny-random-llama",
        task_type="causal-lm",
    )
    tensors = load_file(path / "adapter_model.safetensors")
    tensors.pop(next(iter(sorted(tensors))))
    save_file(tensors, str(path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="no LoRA weights for module"):
        load_adapter(tiny_random_llama(), path)
    (path / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        load_adapter(tiny_random_llama(), path)
    wrapped_differently = apply_lorasp(tiny_random_llama(), LoraSPConfig(r=2, mask_seed=1))
    with pytest.raises(ValueError, match="mask_seed"):
        load_adapter(wrapped_differently, path)


def test_all_linear_on_a_head_with_linears_inside_round_trips(tmp_path: Path, token_batch: Callable) -> None:
    """RoBERTa's head holds its own `dense`: it trains in full and gets no adapter, in PEFT too."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_labels=2,
        max_position_embeddings=40,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base_state = RobertaForSequenceClassification(config).state_dict()

    def fresh() -> nn.Module:
        model = RobertaForSequenceClassification(config)
        model.load_state_dict(base_state)
        return model.eval()

    ours = apply_lorasp(fresh(), LoraSPConfig(r=2, target_modules="all-linear"))
    wrapped = [name for name, _ in lorasp_layers(ours)]
    assert "roberta.encoder.layer.0.attention.self.query" in wrapped
    assert not any(name.startswith("classifier") for name in wrapped)
    with torch.no_grad():
        for _, layer in lorasp_layers(ours):
            layer.lora_B_trainable.normal_(std=0.1)
        ours.classifier.dense.weight.add_(0.1)
    path = save_adapter(ours, tmp_path / "r", base_model_name_or_path="tiny-roberta", task_type="seq-cls")
    peft_model = PeftModel.from_pretrained(fresh(), path).eval()
    input_ids = token_batch(64)
    with torch.no_grad():
        torch.testing.assert_close(
            peft_model(input_ids=input_ids).logits, ours(input_ids=input_ids).logits, atol=1e-5, rtol=0
        )
