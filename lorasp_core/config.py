"""LoRA-SP adapter configuration: validated, immutable, JSON round-trippable."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

# Per-architecture default targets, keyed by `transformers` `config.model_type`.
# Attention projections only, as in the LoRA paper and PEFT's defaults.
DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen3": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "gemma": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "phi3": ("qkv_proj", "o_proj"),
    "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "bert": ("query", "key", "value"),
    "roberta": ("query", "key", "value"),
    "xlm-roberta": ("query", "key", "value"),
    "electra": ("query", "key", "value"),
    "distilbert": ("q_lin", "k_lin", "v_lin"),
    "deberta-v2": ("query_proj", "key_proj", "value_proj"),
}

ALL_LINEAR: Literal["all-linear"] = "all-linear"
TargetModules = tuple[str, ...] | Literal["all-linear"] | None


def _as_name_tuple(field_name: str, value: object) -> tuple[str, ...]:
    """Accept any non-string sequence of non-empty strings (JSON gives lists)."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{field_name} must be a list of module names, got {value!r}")
    names = tuple(value)
    if not names:
        raise ValueError(f"{field_name} must not be empty")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{field_name} entries must be non-empty strings, got {name!r}")
    return names


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class LoraSPConfig:
    """Hyper-parameters of a LoRA-SP adapter.

    `freeze_ratio` of the entries of every A and B matrix are chosen at random (seeded by
    `mask_seed` and the module name) and frozen at their initial values for the whole run.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: TargetModules = None  # None: DEFAULT_TARGET_MODULES[model_type]
    freeze_ratio: float = 0.5  # 0.0 is plain LoRA
    mask_seed: int = 0
    init_seed: int = 0
    modules_to_save: tuple[str, ...] | None = None  # None: the classification head of seq-cls models

    def __post_init__(self) -> None:
        if not _is_int(self.r) or self.r <= 0:
            raise ValueError(f"r must be > 0, got {self.r!r}")
        if not _is_number(self.alpha) or self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must satisfy 0 <= dropout < 1, got {self.dropout!r}")
        if not _is_number(self.freeze_ratio) or not 0.0 <= self.freeze_ratio < 1.0:
            raise ValueError(f"freeze_ratio must satisfy 0 <= freeze_ratio < 1, got {self.freeze_ratio!r}")
        for seed_field in ("mask_seed", "init_seed"):
            seed = getattr(self, seed_field)
            if not _is_int(seed) or seed < 0:
                raise ValueError(f"{seed_field} must be a non-negative integer, got {seed!r}")
        # Normalise lists (from JSON or callers) to tuples so the frozen dataclass stays hashable.
        if self.target_modules is not None and self.target_modules != ALL_LINEAR:
            object.__setattr__(self, "target_modules", _as_name_tuple("target_modules", self.target_modules))
        if self.modules_to_save is not None:
            heads = _as_name_tuple("modules_to_save", self.modules_to_save)
            object.__setattr__(self, "modules_to_save", heads)
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "freeze_ratio", float(self.freeze_ratio))

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("target_modules", "modules_to_save"):
            if isinstance(data[key], tuple):
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraSPConfig:
        if not isinstance(data, dict):
            raise ValueError(f"LoraSPConfig.from_dict expects a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LoraSPConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LoraSPConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"LoraSPConfig JSON is invalid: {exc}") from exc
        return cls.from_dict(data)
