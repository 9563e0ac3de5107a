"""A base model's module tree without its weights: what a job may target, checked before it is queued.

Building a model on the `meta` device allocates no memory and reads no weights, so the API can tell a
job whose `target_modules` match nothing in its base model at creation (a 400), instead of letting
the worker fail on it later. Only the config is read: the tiny models' in-code one, a packaged
model's `config.json`, or the GGUF's metadata (SmolLM2).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
)

from lorasp_core.config import LoraSPConfig
from lorasp_core.models import catalog
from lorasp_core.models.catalog import CATALOG, MINILM_NAME, SMOLLM2_GGUF_FILE, SMOLLM2_NAME, TaskType
from lorasp_core.models.loading import infer_task
from lorasp_core.models.tiny import TINY_BERT_NAME, TINY_LLAMA_NAME, tiny_random_bert, tiny_random_llama
from lorasp_core.wrapping import resolve_modules_to_save, resolve_target_names


def base_model_config(name_or_path: str, cache_dir: Path | None = None) -> tuple[PretrainedConfig, TaskType]:
    """The transformers config and task of a catalog model or local directory (no weights read).

    SmolLM2's config comes from its dequantised cache when one exists (milliseconds), else from the
    GGUF's metadata (seconds: the reader parses the whole vocabulary too).
    """
    entry = CATALOG.get(name_or_path)
    if entry is None:
        local_dir = Path(name_or_path).expanduser()
        if not (local_dir / "config.json").is_file():
            raise ValueError(f"unknown base model {name_or_path!r}")
        return AutoConfig.from_pretrained(str(local_dir), local_files_only=True), infer_task(local_dir)
    if entry.name == SMOLLM2_NAME:
        cached = (cache_dir or catalog.default_cache_dir()) / entry.name
        if (cached / "config.json").is_file():
            return AutoConfig.from_pretrained(str(cached), local_files_only=True), entry.task
        gguf = catalog.packaged_file(entry, SMOLLM2_GGUF_FILE)
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        return config, entry.task
    if entry.name == MINILM_NAME:
        model_dir = catalog.packaged_file(entry, catalog.MINILM_SUBDIR)
        return AutoConfig.from_pretrained(str(model_dir), local_files_only=True), entry.task
    if entry.name == TINY_LLAMA_NAME:
        return tiny_random_llama().config, entry.task
    if entry.name == TINY_BERT_NAME:
        return tiny_random_bert().config, entry.task
    raise AssertionError(f"no config source for catalog entry {entry.name!r}")  # pragma: no cover


@functools.lru_cache(maxsize=32)
def model_skeleton(name_or_path: str, cache_dir: Path | None = None) -> nn.Module:
    """The model's modules on the meta device (shapes and names, no storage); cached per name."""
    config, task = base_model_config(name_or_path, cache_dir)
    auto_class = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    with torch.device("meta"):
        model: nn.Module = auto_class.from_config(config)  # type: ignore[no-untyped-call]
    return model


def check_adapter_targets(name_or_path: str, config: LoraSPConfig, cache_dir: Path | None = None) -> None:
    """Raise ValueError (naming the field) if `config`'s target modules or modules_to_save miss the model."""
    skeleton = model_skeleton(name_or_path, cache_dir)
    resolve_target_names(skeleton, config)
    resolve_modules_to_save(skeleton, config)
