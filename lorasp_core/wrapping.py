"""Wrap a transformers model's target linears in `LoraSPLinear` (in place) and freeze the base."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorasp_core.config import ALL_LINEAR, DEFAULT_TARGET_MODULES, LoraSPConfig
from lorasp_core.layers import LoraSPLinear

# Attribute names stored on the wrapped model (plain attributes, so they survive `model.to()`).
CONFIG_ATTR = "lorasp_config"
MODULES_TO_SAVE_ATTR = "lorasp_modules_to_save"
# Heads that transformers' *ForSequenceClassification models use (PEFT's SEQ_CLS defaults).
CLASSIFIER_HEAD_NAMES = ("classifier", "score")
# Output layers never adapted by "all-linear" (as PEFT): they are the vocabulary/label projection.
OUTPUT_LAYER_NAMES = ("lm_head", "embed_out", "output") + CLASSIFIER_HEAD_NAMES


def is_sequence_classifier(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


def _model_type(model: nn.Module) -> str | None:
    model_config = getattr(model, "config", None)
    model_type = getattr(model_config, "model_type", None)
    return model_type if isinstance(model_type, str) else None


def _matches(module_name: str, target: str) -> bool:
    # Same rule as PEFT's list form: the full name, or a dotted suffix of it.
    return module_name == target or module_name.endswith("." + target)


def _is_adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | Conv1D)


def resolve_target_names(model: nn.Module, config: LoraSPConfig) -> list[str]:
    """Full module names to wrap; raises ValueError naming targets that match nothing."""
    modules = dict(model.named_modules())
    if config.target_modules == ALL_LINEAR:
        return [
            name
            for name, module in modules.items()
            if _is_adaptable(module) and name.rsplit(".", 1)[-1] not in OUTPUT_LAYER_NAMES
        ]
    targets = config.target_modules
    if targets is None:
        model_type = _model_type(model)
        if model_type not in DEFAULT_TARGET_MODULES:
            raise ValueError(
                f"target_modules: no default for model type {model_type!r}; "
                f"pass module names or 'all-linear' (defaults exist for {sorted(DEFAULT_TARGET_MODULES)})"
            )
        targets = DEFAULT_TARGET_MODULES[model_type]
    missing = [target for target in targets if not any(_matches(name, target) for name in modules)]
    if missing:
        raise ValueError(f"target_modules not found in the model: {', '.join(missing)}")
    selected = [name for name in modules if name and any(_matches(name, t) for t in targets)]
    unsupported = [name for name in selected if not _is_adaptable(modules[name])]
    if unsupported:
        kinds = ", ".join(f"{name} ({type(modules[name]).__name__})" for name in unsupported)
        raise ValueError(f"target_modules must be nn.Linear or Conv1D layers; got {kinds}")
    return selected


def resolve_modules_to_save(model: nn.Module, config: LoraSPConfig) -> list[str]:
    """Full module names trained in full (the classification head by default)."""
    modules = dict(model.named_modules())
    if config.modules_to_save is None:
        if not is_sequence_classifier(model):
            return []
        return [name for name in CLASSIFIER_HEAD_NAMES if name in modules]
    missing = [m for m in config.modules_to_save if not any(_matches(name, m) for name in modules)]
    if missing:
        raise ValueError(f"modules_to_save not found in the model: {', '.join(missing)}")
    return [name for name in modules if name and any(_matches(name, m) for m in config.modules_to_save)]


def apply_lorasp(model: nn.Module, config: LoraSPConfig) -> nn.Module:
    """Wrap the targeted layers of `model` in place and return it; only adapters + head train."""
    if getattr(model, CONFIG_ATTR, None) is not None:
        raise ValueError("apply_lorasp: the model is already wrapped")
    head_names = resolve_modules_to_save(model, config)
    # Heads train in full, so layers inside them (e.g. RoBERTa's classifier.dense) get no adapter.
    target_names = [
        name
        for name in resolve_target_names(model, config)
        if not any(name == head or name.startswith(head + ".") for head in head_names)
    ]
    if not target_names:
        raise ValueError("target_modules: every matching layer is inside modules_to_save; nothing to adapt")

    # The one place where the base model is frozen.
    for parameter in model.parameters():
        parameter.requires_grad_(False)

    for name in target_names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base_layer = getattr(parent, child_name)
        wrapped = LoraSPLinear(
            base_layer,
            name=name,
            r=config.r,
            alpha=config.alpha,
            dropout=config.dropout,
            freeze_ratio=config.freeze_ratio,
            mask_seed=config.mask_seed,
            init_seed=config.init_seed,
        )
        setattr(parent, child_name, wrapped)

    for name in head_names:
        for parameter in model.get_submodule(name).parameters():
            parameter.requires_grad_(True)

    setattr(model, CONFIG_ATTR, config)
    setattr(model, MODULES_TO_SAVE_ATTR, tuple(head_names))
    return model


def lorasp_config_of(model: nn.Module) -> LoraSPConfig:
    config = getattr(model, CONFIG_ATTR, None)
    if not isinstance(config, LoraSPConfig):
        raise ValueError("the model is not wrapped by apply_lorasp")
    return config


def modules_to_save_of(model: nn.Module) -> tuple[str, ...]:
    names = getattr(model, MODULES_TO_SAVE_ATTR, ())
    return tuple(names)


def lorasp_layers(model: nn.Module) -> Iterator[tuple[str, LoraSPLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraSPLinear):
            yield name, module


def trainable_parameters(model: nn.Module) -> int:
    """Entries that really train: frozen LoRA-SP entries are buffers, so they are not counted."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def _adapter_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the trainable LoRA A/B parameters (what the optimizer state is keyed by; no head)."""
    return {
        id(parameter)
        for _, layer in lorasp_layers(model)
        for parameter in (layer.lora_A_trainable, layer.lora_B_trainable)
    }


def adapter_optimizer_state_entries(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """Elements of Adam's exp_avg/exp_avg_sq held for the LoRA adapter parameters (not the head)."""
    adapter_parameters = _adapter_parameter_ids(model)
    total = 0
    for parameter, state in optimizer.state.items():
        if id(parameter) in adapter_parameters:
            total += sum(state[key].numel() for key in ("exp_avg", "exp_avg_sq") if key in state)
    return total


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """The base model inside the block (every LoRA-SP layer computes its base layer alone), like PEFT's
    `disable_adapter()`: DPO's reference policy without a second copy of the model. A classification
    head (modules_to_save) stays as trained. Merged adapters cannot be switched off: ValueError."""
    layers = [layer for _, layer in lorasp_layers(model)]
    if any(layer.merged for layer in layers):
        raise ValueError("adapters_disabled needs unmerged adapters (call unmerge_adapters first)")
    previous = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, was_disabled in zip(layers, previous, strict=True):
            layer.disabled = was_disabled


def merge_adapters(model: nn.Module) -> None:
    for _, layer in lorasp_layers(model):
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for _, layer in lorasp_layers(model):
        layer.unmerge()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, int]:
    """Bytes of per-element optimizer state (Adam moments; scalar step counters excluded) by owner."""
    adapter_parameters = _adapter_parameter_ids(model)
    totals = {"adapter": 0, "other": 0}
    for parameter, state in optimizer.state.items():
        owner = "adapter" if id(parameter) in adapter_parameters else "other"
        totals[owner] += sum(
            value.numel() * value.element_size()
            for value in state.values()
            if isinstance(value, torch.Tensor) and value.dim() > 0
        )
    return {**totals, "total": totals["adapter"] + totals["other"]}
