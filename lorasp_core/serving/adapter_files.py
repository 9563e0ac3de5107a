"""Reading a PEFT-format adapter directory into plain tensors, with every failure as AdapterLoadError.

Only file-level checks happen here; compatibility with a base model is checked by
`ResidentModel.validate` (it needs the model's module tree).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lorasp_core.peft_format import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    KEY_PREFIX,
    LORASP_FILE,
    PEFT_TASK_TYPES,
)
from lorasp_core.serving.types import AdapterLoadError
from lorasp_core.wrapping import _matches


@dataclass(frozen=True)
class LoraPair:
    """One adapted module: A (r, in), B (out, r) and its scaling alpha / r (or alpha / sqrt(r))."""

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    scaling: float

    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])


@dataclass(frozen=True)
class ParsedAdapter:
    adapter_id: str
    path: Path
    base_model_name_or_path: str | None
    task: str  # "causal-lm" | "seq-cls"
    lora: dict[str, LoraPair]  # module path in the base model -> weights
    saved_modules: dict[str, dict[str, torch.Tensor]]  # modules_to_save: module path -> {param name: tensor}
    label_names: tuple[str, ...] | None
    chat_template: str | None
    extra: dict[str, Any]

    @property
    def rank(self) -> int:
        return max((pair.rank for pair in self.lora.values()), default=0)

    @property
    def nbytes(self) -> int:
        lora = sum(p.lora_A.nbytes + p.lora_B.nbytes for p in self.lora.values())
        saved = sum(t.nbytes for params in self.saved_modules.values() for t in params.values())
        return lora + saved


def _read_json(adapter_id: str, path: Path, required: bool) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise AdapterLoadError(adapter_id, path.name, f"missing file (looked in {path.parent})")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterLoadError(adapter_id, path.name, f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise AdapterLoadError(adapter_id, path.name, "must contain a JSON object")
    return data


def _pattern_value(patterns: dict[str, Any], module_path: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches the module path or a dotted suffix of it."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", module_path):
            return value
    return default


def _check_config(adapter_id: str, config: dict[str, Any]) -> None:
    def bad(problem: str) -> AdapterLoadError:
        return AdapterLoadError(adapter_id, ADAPTER_CONFIG_FILE, problem)

    if config.get("peft_type", "LORA") != "LORA":
        raise bad(f"peft_type must be LORA, got {config.get('peft_type')!r}")
    if config.get("task_type") not in PEFT_TASK_TYPES:
        raise bad(f"task_type must be one of {sorted(PEFT_TASK_TYPES)}, got {config.get('task_type')!r}")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise bad(f"r must be a positive integer, got {r!r}")
    alpha = config.get("lora_alpha", r)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise bad(f"lora_alpha must be a number, got {alpha!r}")
    if config.get("use_dora"):
        raise bad("DoRA adapters are not supported by the multi-adapter engine")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise bad("adapters that train biases are not supported by the multi-adapter engine")


def read_peft_adapter(adapter_id: str, path: Path | str, *, max_rank: int) -> ParsedAdapter:
    """Parse and sanity-check an adapter directory (config, weights, optional lorasp.json)."""
    directory = Path(path)
    if not directory.is_dir():
        raise AdapterLoadError(adapter_id, str(directory), "adapter directory does not exist")
    config = _read_json(adapter_id, directory / ADAPTER_CONFIG_FILE, required=True)
    assert config is not None
    _check_config(adapter_id, config)
    extra = _read_json(adapter_id, directory / LORASP_FILE, required=False) or {}

    weights_path = directory / ADAPTER_WEIGHTS_FILE
    if not weights_path.is_file():
        raise AdapterLoadError(adapter_id, ADAPTER_WEIGHTS_FILE, f"missing file (looked in {directory})")
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterLoadError(adapter_id, ADAPTER_WEIGHTS_FILE, f"cannot read safetensors: {exc}") from exc

    lora, saved_modules = _split_tensors(adapter_id, config, tensors, max_rank)
    label_names = extra.get("label_names")
    if label_names is not None and (
        not isinstance(label_names, list) or not all(isinstance(n, str) for n in label_names)
    ):
        raise AdapterLoadError(adapter_id, LORASP_FILE, "label_names must be a list of strings")
    chat_template = extra.get("chat_template")
    if chat_template is not None and not isinstance(chat_template, str):
        raise AdapterLoadError(adapter_id, LORASP_FILE, "chat_template must be a string")
    base_name = config.get("base_model_name_or_path")
    return ParsedAdapter(
        adapter_id=adapter_id,
        path=directory,
        base_model_name_or_path=base_name if isinstance(base_name, str) and base_name else None,
        task=PEFT_TASK_TYPES[config["task_type"]],
        lora=lora,
        saved_modules=saved_modules,
        label_names=tuple(label_names) if label_names is not None else None,
        chat_template=chat_template,
        extra=extra,
    )


def _split_tensors(
    adapter_id: str, config: dict[str, Any], tensors: dict[str, torch.Tensor], max_rank: int
) -> tuple[dict[str, LoraPair], dict[str, dict[str, torch.Tensor]]]:
    def bad(problem: str) -> AdapterLoadError:
        return AdapterLoadError(adapter_id, ADAPTER_WEIGHTS_FILE, problem)

    halves: dict[str, dict[str, torch.Tensor]] = {}
    saved_modules: dict[str, dict[str, torch.Tensor]] = {}
    modules_to_save = [str(m) for m in (config.get("modules_to_save") or [])]
    for key, tensor in tensors.items():
        if not key.startswith(KEY_PREFIX):
            raise bad(f"unexpected tensor key {key!r} (expected the prefix {KEY_PREFIX!r})")
        if not torch.is_floating_point(tensor) or not bool(torch.isfinite(tensor).all()):
            raise bad(f"tensor {key!r} is not a finite floating-point tensor")
        name = key[len(KEY_PREFIX) :]
        match = re.fullmatch(r"(.+)\.lora_([AB])\.weight", name)
        if match is not None:
            halves.setdefault(match.group(1), {})[match.group(2)] = tensor
            continue
        if "lora_" in name:
            raise bad(f"unsupported LoRA tensor {key!r} (only lora_A/lora_B weights of linear layers)")
        module_path, _, param = name.rpartition(".")
        if not any(_matches(module_path, m) for m in modules_to_save):
            raise bad(
                f"tensor {key!r} is neither a LoRA weight nor part of modules_to_save {modules_to_save}"
            )
        saved_modules.setdefault(module_path, {})[param] = tensor

    r_default: int = config["r"]
    alpha_default = float(config.get("lora_alpha", r_default))
    lora: dict[str, LoraPair] = {}
    for module_path, pair in halves.items():
        if set(pair) != {"A", "B"}:
            raise bad(f"module {module_path!r} has lora_{''.join(pair)} but not both lora_A and lora_B")
        lora_A, lora_B = pair["A"], pair["B"]
        if lora_A.ndim != 2 or lora_B.ndim != 2 or lora_A.shape[0] != lora_B.shape[1]:
            raise bad(
                f"module {module_path!r}: lora_A {tuple(lora_A.shape)} and lora_B {tuple(lora_B.shape)} "
                "are not (r, in) and (out, r)"
            )
        rank = int(lora_A.shape[0])
        expected_rank = int(_pattern_value(config.get("rank_pattern") or {}, module_path, r_default))
        if rank != expected_rank:
            raise bad(
                f"module {module_path!r}: tensors have rank {rank} but the config says r={expected_rank}"
            )
        if rank > max_rank:
            raise bad(f"module {module_path!r}: rank {rank} exceeds this server's max_rank {max_rank}")
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module_path, alpha_default))
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        lora[module_path] = LoraPair(lora_A.contiguous(), lora_B.contiguous(), scaling)
    if not lora:
        raise bad("contains no lora_A/lora_B weights")
    return lora, saved_modules
