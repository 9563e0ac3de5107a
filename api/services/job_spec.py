"""Builds a job's `TrainingSpec` from the create-job request, once (the worker reads it back).

Precedence for each knob: the method's hyperparameters, then the top-level `hyperparameters`
(OpenAI's older field), then the defaults: for OpenAI's three knobs (n_epochs, batch_size,
learning_rate_multiplier) the values `jobs.auto.auto_hyperparameters` picks for the training file's
size, for the rest the engine's (see `lorasp_service.jobs.spec`). "auto" means the default.
Limits of this server (largest servable rank, longest example) are checked here, where the error can
name the request field.

A continued job (`parent` given) takes the parent's LoRA-SP structure: rank, target_modules,
freeze_ratio and mask_seed are inherited when omitted and refused when they differ (alpha is inherited
when omitted, so the child starts as the parent's exact function, but may be changed).
"""

from __future__ import annotations

import secrets
from dataclasses import asdict
from typing import Any

from api.errors import APIError
from api.schemas.job_requests import CreateFineTuningJobRequest, LoraSPHyperparameters, Method
from api.services.job_parent import JobBase, ParentStructure
from lorasp_core.config import LoraSPConfig
from lorasp_core.models.skeleton import check_adapter_targets, model_skeleton
from lorasp_core.wrapping import resolve_target_names
from lorasp_service.jobs import TrainingSpec
from lorasp_service.jobs.auto import DatasetSize, auto_eval_every, auto_hyperparameters
from lorasp_service.jobs.spec import TRAIN_DEFAULTS
from lorasp_service.settings import Settings


def _pick(*values: Any) -> Any:
    """The first value that is given and not "auto"; None: use the spec's default."""
    for value in values:
        if value is not None and value != "auto":
            return value
    return None


def _too_large(method_type: str, name: str, detail: str) -> APIError:
    param = f"method.{method_type}.hyperparameters.{name}"
    return APIError(400, f"Invalid value for '{param}': {detail}", param=param)


def _split_batch_between_processes(
    values: dict[str, Any], batch_size_given: bool, method_type: str, settings: Settings
) -> None:
    """Each rank takes batch_size / processes examples of every batch: a given batch size must divide
    evenly; an "auto" one is rounded up to the next multiple of processes."""
    processes = values.get("processes", TRAIN_DEFAULTS["processes"])
    param = f"method.{method_type}.hyperparameters.processes"
    if processes > settings.max_processes:
        detail = f"{processes} is above this server's limit of {settings.max_processes} processes per job."
        raise _too_large(method_type, "processes", detail)
    batch_size = values["batch_size"]
    if batch_size % processes == 0:
        return
    if batch_size_given:
        message = (
            f"Invalid value for '{param}': batch_size {batch_size} does not divide evenly between "
            f"{processes} processes (each takes an equal share of every batch)."
        )
        raise APIError(400, message, param=param)
    values["batch_size"] = -(-batch_size // processes) * processes


def build_spec(
    request: CreateFineTuningJobRequest,
    settings: Settings,
    training: DatasetSize,
    base: JobBase | None = None,
) -> TrainingSpec:
    """`base`: what the job trains from (default: `request.model` as a base model, no parent)."""
    # The model the module checks build: the catalog name or the registered model's store directory.
    model = (base.source or base.base_model) if base is not None else request.model
    parent = base.parent if base is not None else None
    method = request.method or Method(type="supervised")
    chosen: LoraSPHyperparameters = method.hyperparameters()
    top = request.hyperparameters
    seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
    given: dict[str, Any] = {
        "n_epochs": _pick(chosen.n_epochs, top and top.n_epochs),
        "batch_size": _pick(chosen.batch_size, top and top.batch_size),
        "learning_rate_multiplier": _pick(
            chosen.learning_rate_multiplier, top and top.learning_rate_multiplier
        ),
        "learning_rate": _pick(chosen.learning_rate),
        "rank": _pick(chosen.rank),
        "alpha": _pick(chosen.alpha),
        "dropout": _pick(chosen.dropout),
        "freeze_ratio": _pick(chosen.freeze_ratio),
        "target_modules": tuple(chosen.target_modules)
        if isinstance(chosen.target_modules, list)
        else chosen.target_modules,
        "weight_decay": _pick(chosen.weight_decay),
        "warmup_ratio": _pick(chosen.warmup_ratio),
        "max_length": _pick(chosen.max_length),
        "eval_every": _pick(chosen.eval_every),
        "mask_seed": chosen.mask_seed,
        "mixed_precision": _pick(chosen.mixed_precision),
        "gradient_checkpointing": _pick(chosen.gradient_checkpointing),
        "processes": _pick(chosen.processes),
        "base_quantization": chosen.base_quantization,
    }
    # Numbers as the stored JSON has always held them: integers for counts, floats for the rest.
    floats = (
        "learning_rate_multiplier",
        "learning_rate",
        "alpha",
        "dropout",
        "freeze_ratio",
        "weight_decay",
        "warmup_ratio",
    )
    values: dict[str, Any] = {
        name: float(value) if name in floats else value for name, value in given.items() if value is not None
    }
    if parent is not None:
        _inherit_structure(values, parent, model, method.type, settings)
    if base is not None and base.target_modules is not None:
        values.setdefault("target_modules", base.target_modules)  # the registered model's default
    batch_size_given = "batch_size" in values
    for name, value in asdict(auto_hyperparameters(training)).items():
        values.setdefault(name, value)
    _split_batch_between_processes(values, batch_size_given, method.type, settings)
    values.setdefault("eval_every", auto_eval_every(training, values["n_epochs"], values["batch_size"]))
    rank = values.get("rank", TrainingSpec.rank)
    if rank > settings.serving_max_rank:
        detail = f"{rank} is above the largest rank this server can serve ({settings.serving_max_rank})."
        raise _too_large(method.type, "rank", detail)
    # A registered model's max_length caps the job's (default: the smaller of the two).
    model_limit = base.max_length if base is not None else None
    max_length = values.setdefault(
        "max_length",
        min(
            TRAIN_DEFAULTS["max_length"],
            settings.max_example_tokens,
            model_limit or settings.max_example_tokens,
        ),
    )
    if max_length > settings.max_example_tokens:
        detail = (
            f"{max_length} is above the server's limit of {settings.max_example_tokens} tokens per example."
        )
        raise _too_large(method.type, "max_length", detail)
    if base is not None and model_limit is not None and max_length > model_limit:
        detail = f"{max_length} is above the registered max_length of '{base.base_model}' ({model_limit})."
        raise _too_large(method.type, "max_length", detail)
    mask_seed = values.pop("mask_seed", seed)
    if (beta := method.beta()) is not None:
        values["beta"] = beta
    spec = TrainingSpec(seed=seed, mask_seed=mask_seed, method_type=method.type, **values)
    if spec.target_modules is not None:  # the per-architecture defaults always match
        _check_targets(model, spec, settings)
    return spec


def _wrapped_modules(model: str, targets: Any, settings: Settings, method_type: str) -> frozenset[str]:
    """The full names of the modules `targets` selects in the base model (how two spellings compare)."""
    try:
        config = LoraSPConfig(target_modules=targets)
        return frozenset(resolve_target_names(model_skeleton(model, settings.model_cache_dir), config))
    except ValueError as error:
        param = f"method.{method_type}.hyperparameters.target_modules"
        raise APIError(400, f"Invalid value for '{param}': {error}.", param=param) from None


def _shown(value: Any) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


def _inherit_structure(
    values: dict[str, Any], parent: ParentStructure, model: str, method_type: str, settings: Settings
) -> None:
    """Fill the parent's structure into `values`; a given value that differs is a 400 naming its field."""
    inherited: dict[str, Any] = {
        "rank": parent.rank,
        "freeze_ratio": parent.freeze_ratio,
        "target_modules": parent.target_modules,
        "mask_seed": parent.mask_seed,
    }
    for name, theirs in inherited.items():
        given = values.get(name)
        if given is None:
            values[name] = theirs
            continue
        if name == "target_modules":
            wrapped = _wrapped_modules(model, given, settings, method_type)
            same = wrapped == _wrapped_modules(model, theirs, settings, method_type)
        else:
            same = given == theirs
        if not same:
            detail = (
                f"{_shown(given)} differs from the {name} {_shown(theirs)} of the model it continues from "
                f"('{parent.model_id}'); a continued job keeps its parent's {name} (omit it to inherit)."
            )
            param = f"method.{method_type}.hyperparameters.{name}"
            raise APIError(400, f"Invalid value for '{param}': {detail}", param=param)
    values.setdefault("alpha", parent.alpha)


def _check_targets(model: str, spec: TrainingSpec, settings: Settings) -> None:
    """Refuse modules the base model lacks here, where the error can name the field, not in the worker."""
    try:
        check_adapter_targets(model, spec.to_lora_config(), settings.model_cache_dir)
    except ValueError as error:
        param = f"method.{spec.method_type}.hyperparameters.target_modules"
        raise APIError(400, f"Invalid value for '{param}': {error}.", param=param) from None
