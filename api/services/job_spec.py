"""Turns a create-job request into the fully resolved training spec stored on the job.

Precedence for each knob: the method's hyperparameters, then the top-level `hyperparameters`
(OpenAI's older field), then the defaults below. "auto" means the default. The worker reads the
result through `lorasp_service.registry.job_training_hyperparameters`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from api.errors import APIError
from api.schemas.job_requests import CreateFineTuningJobRequest, LoraSPHyperparameters, Method
from lorasp_service.settings import Settings

AUTO_N_EPOCHS = 3
AUTO_BATCH_SIZE = 8
AUTO_LEARNING_RATE_MULTIPLIER = 1.0
# Base learning rate of LoRA-SP adapters (half of each matrix is frozen, so a LoRA-typical 2e-4 is slow).
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_RANK = 8
DEFAULT_ALPHA = 16.0
DEFAULT_DROPOUT = 0.0
DEFAULT_FREEZE_RATIO = 0.5
DEFAULT_WEIGHT_DECAY = 0.0
DEFAULT_WARMUP_RATIO = 0.0
DEFAULT_MAX_LENGTH = 512


@dataclass(frozen=True)
class ResolvedSpec:
    seed: int
    hyperparameters: dict[str, Any]  # OpenAI's trio, resolved
    method: dict[str, Any]  # {"type": ..., <type>: {"hyperparameters": {...every knob resolved...}}}


def _pick(*values: Any, default: Any) -> Any:
    for value in values:
        if value is not None and value != "auto":
            return value
    return default


def _method_param(method_type: str, name: str) -> str:
    return f"method.{method_type}.hyperparameters.{name}"


def resolve_spec(request: CreateFineTuningJobRequest, settings: Settings) -> ResolvedSpec:
    method = request.method or Method(type="supervised")
    chosen: LoraSPHyperparameters = method.hyperparameters()
    top = request.hyperparameters
    n_epochs = _pick(chosen.n_epochs, top and top.n_epochs, default=AUTO_N_EPOCHS)
    batch_size = _pick(chosen.batch_size, top and top.batch_size, default=AUTO_BATCH_SIZE)
    multiplier = float(
        _pick(
            chosen.learning_rate_multiplier,
            top and top.learning_rate_multiplier,
            default=AUTO_LEARNING_RATE_MULTIPLIER,
        )
    )
    rank = _pick(chosen.rank, default=DEFAULT_RANK)
    if rank > settings.serving_max_rank:
        raise APIError(
            400,
            f"Invalid value for '{_method_param(method.type, 'rank')}': {rank} is above the largest rank "
            f"this server can serve ({settings.serving_max_rank}).",
            param=_method_param(method.type, "rank"),
        )
    max_length = _pick(chosen.max_length, default=min(DEFAULT_MAX_LENGTH, settings.max_example_tokens))
    if max_length > settings.max_example_tokens:
        raise APIError(
            400,
            f"Invalid value for '{_method_param(method.type, 'max_length')}': {max_length} is above the "
            f"server's limit of {settings.max_example_tokens} tokens per example.",
            param=_method_param(method.type, "max_length"),
        )
    learning_rate = float(_pick(chosen.learning_rate, default=DEFAULT_LEARNING_RATE))
    seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
    resolved = {
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate_multiplier": multiplier,
        "learning_rate": learning_rate,
        "effective_learning_rate": learning_rate * multiplier,
        "rank": rank,
        "alpha": float(_pick(chosen.alpha, default=DEFAULT_ALPHA)),
        "dropout": float(_pick(chosen.dropout, default=DEFAULT_DROPOUT)),
        "freeze_ratio": float(_pick(chosen.freeze_ratio, default=DEFAULT_FREEZE_RATIO)),
        "target_modules": chosen.target_modules,
        "mask_seed": seed,
        "weight_decay": float(_pick(chosen.weight_decay, default=DEFAULT_WEIGHT_DECAY)),
        "warmup_ratio": float(_pick(chosen.warmup_ratio, default=DEFAULT_WARMUP_RATIO)),
        "max_length": max_length,
    }
    return ResolvedSpec(
        seed=seed,
        hyperparameters={
            "n_epochs": n_epochs,
            "batch_size": batch_size,
            "learning_rate_multiplier": multiplier,
        },
        method={"type": method.type, method.type: {"hyperparameters": resolved}},
    )
