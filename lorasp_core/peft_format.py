"""Save / load LoRA-SP adapters as PEFT-format directories (+ `lorasp.json` for the masks)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lorasp_core.config import ALL_LINEAR, LoraSPConfig
from lorasp_core.train_config import TaskType as TaskType  # re-exported: adapters, checkpoint
from lorasp_core.wrapping import (
    CLASSIFIER_HEAD_NAMES,
    CONFIG_ATTR,
    apply_lorasp,
    lorasp_config_of,
    lorasp_layers,
    modules_to_save_of,
)

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
LORASP_FILE = "lorasp.json"
KEY_PREFIX = "base_model.model."  # PEFT's prefix for every saved key
PEFT_TASK_TYPES: dict[str, TaskType] = {"CAUSAL_LM": "causal-lm", "SEQ_CLS": "seq-cls"}
_PEFT_TASK_TYPES = PEFT_TASK_TYPES  # the old private name
_TASK_TO_PEFT: dict[TaskType, str] = {task: peft for peft, task in _PEFT_TASK_TYPES.items()}


@dataclass(frozen=True)
class AdapterMetadata:
    """Everything about a saved adapter that is not a weight. `is_lorasp` is False for plain PEFT dirs."""

    path: Path
    task: TaskType
    base_model_name_or_path: str | None
    r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: tuple[str, ...] | Literal["all-linear"]
    modules_to_save: tuple[str, ...] | None
    fan_in_fan_out: bool
    freeze_ratio: float
    mask_seed: int
    init_seed: int
    is_lorasp: bool
    label_names: list[str] | None = None
    chat_template: str | None = None
    training_summary: dict[str, Any] | None = None

    def lorasp_config(self) -> LoraSPConfig:
        return LoraSPConfig(
            r=self.r,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            target_modules=self.target_modules,
            freeze_ratio=self.freeze_ratio,
            mask_seed=self.mask_seed,
            init_seed=self.init_seed,
            modules_to_save=self.modules_to_save,
        )


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp_path = path.with_name(path.name + ".tmp")
    tmp_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_path, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"{path.name} is missing from the adapter directory {path.parent}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path.name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} must hold a JSON object")
    return data


def _saved_target_modules(model: nn.Module, wrapped_names: list[str]) -> list[str]:
    """Leaf names when PEFT would select exactly the wrapped layers with them, full names otherwise."""
    leaf_names = sorted({name.rsplit(".", 1)[-1] for name in wrapped_names})
    # PEFT matches any module whose name ends with a leaf; our base layers sit below the wrappers.
    selected_by_leaves = [
        name
        for name, _ in model.named_modules()
        if "base_layer" not in name.split(".") and name.rsplit(".", 1)[-1] in leaf_names
    ]
    if sorted(selected_by_leaves) == sorted(wrapped_names):
        return leaf_names
    return sorted(wrapped_names)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Dense A/B of every layer and the full head, under PEFT's key names."""
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in lorasp_layers(model):
        tensors[f"{KEY_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().cpu().contiguous()
        tensors[f"{KEY_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().cpu().contiguous()
    for head_name in modules_to_save_of(model):
        for key, value in model.get_submodule(head_name).state_dict().items():
            tensors[f"{KEY_PREFIX}{head_name}.{key}"] = value.detach().cpu().contiguous()
    return tensors


def save_adapter(
    model: nn.Module,
    path: str | Path,
    *,
    base_model_name_or_path: str,
    task_type: TaskType,
    label_names: list[str] | None = None,
    chat_template: str | None = None,
    training_summary: dict[str, Any] | None = None,
) -> Path:
    """Write `model`'s adapter to the directory `path` (created) and return it."""
    if task_type not in _TASK_TO_PEFT:
        raise ValueError(f"task_type must be one of {sorted(_TASK_TO_PEFT)}, got {task_type!r}")
    config = lorasp_config_of(model)
    layers = list(lorasp_layers(model))
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    heads = list(modules_to_save_of(model))

    weights_tmp = directory / (ADAPTER_WEIGHTS_FILE + ".tmp")
    save_file(adapter_state_dict(model), str(weights_tmp), metadata={"format": "pt"})
    os.replace(weights_tmp, directory / ADAPTER_WEIGHTS_FILE)

    peft_config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": _TASK_TO_PEFT[task_type],
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": _saved_target_modules(model, [name for name, _ in layers]),
        "modules_to_save": heads or None,
        "fan_in_fan_out": any(layer.fan_in_fan_out for _, layer in layers),
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
        "revision": None,
    }
    _write_json_atomic(directory / ADAPTER_CONFIG_FILE, peft_config)
    _write_json_atomic(
        directory / LORASP_FILE,
        {
            "format_version": 1,
            "task": task_type,
            "freeze_ratio": config.freeze_ratio,
            "mask_seed": config.mask_seed,
            "init_seed": config.init_seed,
            "config": config.to_dict(),
            "label_names": label_names,
            "chat_template": chat_template,
            "training_summary": training_summary,
        },
    )
    return directory


def read_adapter_metadata(path: str | Path) -> AdapterMetadata:
    """Read an adapter directory's configs (ours or PEFT's own) without touching weights."""
    directory = Path(path)
    peft_config = _read_json(directory / ADAPTER_CONFIG_FILE)
    if peft_config.get("peft_type") != "LORA":
        peft_type = peft_config.get("peft_type")
        raise ValueError(f"{ADAPTER_CONFIG_FILE}: peft_type must be 'LORA', got {peft_type!r}")
    task = _PEFT_TASK_TYPES.get(str(peft_config.get("task_type")))
    if task is None:
        raise ValueError(f"{ADAPTER_CONFIG_FILE}: unsupported task_type {peft_config.get('task_type')!r}")
    raw_targets = peft_config.get("target_modules")
    targets: tuple[str, ...] | Literal["all-linear"]
    if raw_targets == ALL_LINEAR:
        targets = ALL_LINEAR
    elif isinstance(raw_targets, list) and raw_targets and all(isinstance(t, str) for t in raw_targets):
        targets = tuple(raw_targets)
    else:
        raise ValueError(f"{ADAPTER_CONFIG_FILE}: target_modules must list module names, got {raw_targets!r}")
    raw_heads = peft_config.get("modules_to_save")
    lorasp = _read_json(directory / LORASP_FILE) if (directory / LORASP_FILE).exists() else {}
    try:
        return AdapterMetadata(
            path=directory,
            task=task,
            base_model_name_or_path=peft_config.get("base_model_name_or_path"),
            r=int(peft_config["r"]),
            lora_alpha=float(peft_config["lora_alpha"]),
            lora_dropout=float(peft_config.get("lora_dropout", 0.0)),
            target_modules=targets,
            modules_to_save=tuple(raw_heads) if raw_heads else None,
            fan_in_fan_out=bool(peft_config.get("fan_in_fan_out", False)),
            freeze_ratio=float(lorasp.get("freeze_ratio", 0.0)),
            mask_seed=int(lorasp.get("mask_seed", 0)),
            init_seed=int(lorasp.get("init_seed", 0)),
            is_lorasp=bool(lorasp),
            label_names=lorasp.get("label_names"),
            chat_template=lorasp.get("chat_template"),
            training_summary=lorasp.get("training_summary"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{ADAPTER_CONFIG_FILE} or {LORASP_FILE} is malformed: {exc!r}") from exc


def _check_same_masks(config: LoraSPConfig, metadata: AdapterMetadata) -> None:
    saved = (metadata.r, metadata.freeze_ratio, metadata.mask_seed)
    if metadata.is_lorasp and (config.r, config.freeze_ratio, config.mask_seed) != saved:
        raise ValueError(
            f"the model is wrapped with r={config.r}, freeze_ratio={config.freeze_ratio}, "
            f"mask_seed={config.mask_seed} but {LORASP_FILE} says r, freeze_ratio, mask_seed = {saved}"
        )


def load_adapter(model: nn.Module, path: str | Path) -> AdapterMetadata:
    """Load an adapter into `model` (wrapping it first if needed) and return its metadata.

    The masks are re-derived from `lorasp.json`, so training can continue where it stopped.
    """
    metadata = read_adapter_metadata(path)
    if getattr(model, CONFIG_ATTR, None) is None:
        config = metadata.lorasp_config()
        if config.modules_to_save is not None:
            # PEFT lists both seq-cls head names; keep only the ones this model has.
            present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
            heads = tuple(h for h in config.modules_to_save if h in present or h not in CLASSIFIER_HEAD_NAMES)
            config = LoraSPConfig.from_dict({**config.to_dict(), "modules_to_save": heads or None})
        apply_lorasp(model, config)
    else:
        _check_same_masks(lorasp_config_of(model), metadata)
    weights_path = metadata.path / ADAPTER_WEIGHTS_FILE
    if not weights_path.exists():
        raise ValueError(f"{ADAPTER_WEIGHTS_FILE} is missing from the adapter directory {metadata.path}")
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{ADAPTER_WEIGHTS_FILE} cannot be read: {exc}") from exc
    # Older PEFT versions keep the adapter name in keys ("lora_A.default.weight"); accept both.
    tensors = {key.replace(".default.weight", ".weight"): value for key, value in tensors.items()}
    used: set[str] = set()
    for name, layer in lorasp_layers(model):
        a_key, b_key = f"{KEY_PREFIX}{name}.lora_A.weight", f"{KEY_PREFIX}{name}.lora_B.weight"
        if a_key not in tensors or b_key not in tensors:
            raise ValueError(f"{ADAPTER_WEIGHTS_FILE}: no LoRA weights for module {name}")
        layer.load_dense(tensors[a_key].float(), tensors[b_key].float())
        used.update((a_key, b_key))
    for head_name in modules_to_save_of(model):
        head = model.get_submodule(head_name)
        prefix = f"{KEY_PREFIX}{head_name}."
        head_state = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
        head_state = {key.removeprefix("modules_to_save.default."): v for key, v in head_state.items()}
        if not head_state:
            raise ValueError(f"{ADAPTER_WEIGHTS_FILE}: no weights for the trained module {head_name}")
        try:
            head.load_state_dict(head_state)
        except RuntimeError as exc:  # shape mismatch, e.g. a different number of labels
            raise ValueError(f"{ADAPTER_WEIGHTS_FILE}: weights for {head_name} do not fit: {exc}") from exc
        used.update(key for key in tensors if key.startswith(prefix))
    unexpected = sorted(set(tensors) - used)
    if unexpected:
        raise ValueError(f"{ADAPTER_WEIGHTS_FILE}: unexpected tensors {', '.join(unexpected[:5])}")
    return metadata
