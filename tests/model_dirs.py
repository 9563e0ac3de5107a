"""Small Hugging Face model directories built in code (no network): what an operator would register.

Each is a real `save_pretrained` directory (config.json, model.safetensors, tokenizer files with a
chat template) of a tiny model: a Llama-style and a Qwen2-style causal LM, and a BERT encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from lorasp_core.models import make_tiny_tokenizer

WIDTH, LAYERS, HEADS, FFN, POSITIONS = 32, 2, 4, 64, 512


def _save(model: PreTrainedModel, target: Path, *, chat_template: bool = True) -> Path:
    tokenizer = make_tiny_tokenizer()
    if not chat_template:
        tokenizer.chat_template = None
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    if not chat_template:  # save_pretrained may keep a template file from the tokenizer's defaults
        for name in ("chat_template.jinja", "chat_template.json"):
            (target / name).unlink(missing_ok=True)
        config_file = target / "tokenizer_config.json"
        config = json.loads(config_file.read_text())
        config.pop("chat_template", None)
        config_file.write_text(json.dumps(config))
    return target


def _common(seed: int) -> dict[str, int]:
    torch.manual_seed(seed)
    tokenizer = make_tiny_tokenizer()
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": WIDTH,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "max_position_embeddings": POSITIONS,
        "pad_token_id": int(tokenizer.pad_token_id),
    }


def llama_dir(target: Path, *, seed: int = 0, chat_template: bool = True) -> Path:
    config = LlamaConfig(num_key_value_heads=HEADS, bos_token_id=1, eos_token_id=2, **_common(seed))
    return _save(LlamaForCausalLM(config), target, chat_template=chat_template)


def qwen2_dir(target: Path, *, seed: int = 0) -> Path:
    config = Qwen2Config(num_key_value_heads=2, bos_token_id=1, eos_token_id=2, **_common(seed))
    return _save(Qwen2ForCausalLM(config), target)


def bert_dir(target: Path, *, seed: int = 0) -> Path:
    config = BertConfig(**_common(seed))
    return _save(BertForSequenceClassification(config), target)


def truncate_weights(model_dir: Path) -> None:
    """Cut model.safetensors in half (an interrupted copy)."""
    weights = model_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
