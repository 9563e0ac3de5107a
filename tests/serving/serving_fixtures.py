"""Helpers for the serving tests: tiny in-code base models and PEFT-saved adapters for them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from lorasp_core.models import (
    TINY_BERT_NAME,
    TINY_LLAMA_NAME,
    make_tiny_tokenizer,
    tiny_random_bert,
    tiny_random_llama,
)

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
BERT_TARGETS = ["query", "value"]
BERT_BASE_LABELS = 2


@dataclass
class Bundle:
    """Structurally a lorasp_core.models.LoadedModel."""

    name: str
    task: str
    model: nn.Module
    tokenizer: Any


def load_tiny(name: str) -> Bundle:
    if name == TINY_LLAMA_NAME:
        return Bundle(name, "causal-lm", tiny_random_llama(seed=0), make_tiny_tokenizer())
    if name == TINY_BERT_NAME:
        return Bundle(
            name, "seq-cls", tiny_random_bert(num_labels=BERT_BASE_LABELS, seed=0), make_tiny_tokenizer()
        )
    raise KeyError(name)


def randomise_lora(model: nn.Module, seed: int, std: float = 0.3) -> None:
    """PEFT initialises B to zero (adapter = no-op); random A and B make every adapter distinct."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def make_llama_adapter(
    directory: Path, seed: int, *, r: int = 4, targets: list[str] | None = None
) -> nn.Module:
    """Save a PEFT causal-LM adapter for tiny-random-llama; returns the PeftModel (a PEFT reference)."""
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets or LLAMA_TARGETS, task_type="CAUSAL_LM")
    peft_model = get_peft_model(tiny_random_llama(seed=0), config)
    randomise_lora(peft_model, seed)
    peft_model.save_pretrained(str(directory))
    peft_model.eval()
    return peft_model


def make_bert_adapter(directory: Path, seed: int, labels: list[str], *, r: int = 4) -> nn.Module:
    """Save a PEFT seq-cls adapter with its own head of len(labels) outputs (+ lorasp.json label names)."""
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=BERT_TARGETS, task_type="SEQ_CLS")
    peft_model = get_peft_model(tiny_random_bert(num_labels=len(labels), seed=0), config)
    randomise_lora(peft_model, seed)
    generator = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "classifier" in name and "modules_to_save" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    peft_model.save_pretrained(str(directory))
    (directory / "lorasp.json").write_text(json.dumps({"label_names": labels}))
    peft_model.eval()
    return peft_model
