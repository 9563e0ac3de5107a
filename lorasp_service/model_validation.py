"""Checks a local Hugging Face model directory before it is registered: every problem a typed error
naming it, so that an operator learns at registration, not from a failed job.

The model is built on the meta device (no memory, no weights read), as the job-creation check does;
the safetensors headers are read (not the tensors), so a directory of any size checks in seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jinja2
import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
)

from lorasp_core.config import DEFAULT_TARGET_MODULES, LoraSPConfig
from lorasp_core.models import TASK_TYPES, TaskType, infer_task
from lorasp_core.wrapping import resolve_target_names
from lorasp_service.base_models import BaseModelError


class InvalidConfigError(BaseModelError):
    code = "invalid_config"


class UnsupportedArchitectureError(BaseModelError):
    code, param = "unsupported_architecture", "task"


class MissingTokenizerError(BaseModelError):
    code = "missing_tokenizer"


class MissingChatTemplateError(BaseModelError):
    code, param = "missing_chat_template", "chat_template"


class TargetModulesNotFoundError(BaseModelError):
    code, param = "invalid_target_modules", "target_modules"


class WeightsMismatchError(BaseModelError):
    code = "invalid_weights"


@dataclass(frozen=True)
class ValidatedModel:
    task: TaskType
    architecture: str
    parameter_count: int
    max_length: int | None
    target_modules: list[str]
    label_names: list[str] | None


def validate_directory(
    path: Path,
    *,
    task: TaskType | None = None,
    chat_template: str | None = None,
    target_modules: list[str] | None = None,
) -> ValidatedModel:
    """What the directory holds, or the first problem found (config, architecture, weights, tokenizer,
    chat template, target modules)."""
    config = _read_config(path)
    if task is None:
        try:
            task = infer_task(path)
        except ValueError as error:
            raise UnsupportedArchitectureError(f"{error} (--task / 'task')") from None
    if task not in TASK_TYPES:
        raise UnsupportedArchitectureError(f"task must be one of {list(TASK_TYPES)}, got {task!r}")
    skeleton = _skeleton(config, task)
    _check_weights(path, skeleton)
    _check_tokenizer(path, task, chat_template)
    targets = _check_targets(skeleton, config, target_modules)
    architecture = type(skeleton).__name__
    max_length = getattr(config, "max_position_embeddings", None)
    labels = None
    if task == "seq-cls" and architecture.endswith("ForSequenceClassification"):
        id2label = getattr(config, "id2label", None) or {}
        names = [str(id2label[key]) for key in sorted(id2label)]
        labels = None if all(name.startswith("LABEL_") for name in names) else names
    return ValidatedModel(
        task=task,
        architecture=architecture,
        parameter_count=sum(parameter.numel() for parameter in skeleton.parameters()),
        max_length=int(max_length) if isinstance(max_length, int) else None,
        target_modules=targets,
        label_names=labels,
    )


def _read_config(path: Path) -> PretrainedConfig:
    config_file = path / "config.json"
    if not path.is_dir():
        raise InvalidConfigError(f"{path} is not a directory")
    if not config_file.is_file():
        raise InvalidConfigError(f"{path} has no config.json (a Hugging Face model directory has one)")
    try:
        json.loads(config_file.read_text(encoding="utf-8"))
        config: PretrainedConfig = AutoConfig.from_pretrained(str(path), local_files_only=True)
        return config
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as error:
        raise InvalidConfigError(f"config.json of {path} cannot be read: {error}") from None


def _skeleton(config: PretrainedConfig, task: TaskType) -> nn.Module:
    auto_class = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    try:
        with torch.device("meta"):
            model: nn.Module = auto_class.from_config(config)  # type: ignore[no-untyped-call]
    except (ValueError, KeyError, TypeError, AttributeError, ImportError) as error:
        kind = getattr(config, "model_type", "?")
        raise UnsupportedArchitectureError(
            f"transformers cannot build model type {kind!r} as a {task} model: {error}"
        ) from None
    return model


def _weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightsMismatchError(f"{path} has no *.safetensors weights (other formats are not accepted)")
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(str(file), "pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - a safe_open handle is not a dict
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except (SafetensorError, OSError) as error:
            problem = f"{file.name} is unreadable (truncated or corrupt?): {error}"
            raise WeightsMismatchError(problem) from None
    return shapes


def _check_weights(path: Path, skeleton: nn.Module) -> None:
    """Every weight of the model's body must be in the files with its shape (a fresh head may be absent)."""
    prefix = str(getattr(skeleton, "base_model_prefix", ""))
    stored = {_strip(key, prefix): shape for key, shape in _weight_shapes(path).items()}
    expected = {_strip(key, prefix): tuple(tensor.shape) for key, tensor in skeleton.state_dict().items()}
    body = getattr(skeleton, prefix, None) if prefix else None
    body_keys = set((body if isinstance(body, nn.Module) else skeleton).state_dict())
    missing = sorted(key for key in body_keys if key not in stored)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise WeightsMismatchError(f"the weights lack tensors the config needs: {shown}")
    wrong = sorted(key for key, shape in stored.items() if key in expected and expected[key] != shape)
    if wrong:
        key = wrong[0]
        raise WeightsMismatchError(
            f"tensor {key!r} has shape {list(stored[key])} in the weights but {list(expected[key])} in the "
            f"config ({len(wrong)} tensors differ)"
        )


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix) + 1 :] if prefix and key.startswith(prefix + ".") else key


def _check_tokenizer(path: Path, task: TaskType, chat_template: str | None) -> None:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise MissingTokenizerError(f"{path} has no usable tokenizer: {error}") from None
    if isinstance(tokenizer, bool) or tokenizer is None:  # pragma: no cover - defensive
        raise MissingTokenizerError(f"{path} has no usable tokenizer")
    if task != "causal-lm":
        return
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise MissingChatTemplateError(
            "the tokenizer has no chat template, which a causal-lm chat model needs; pass one with "
            "--chat-template FILE (CLI) or 'chat_template' (API)"
        )
    if not isinstance(template, str):
        raise MissingChatTemplateError("named chat templates are not supported; pass one template")
    try:  # rendered once, as training and serving will
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}],
            chat_template=template,
            tokenize=False,
            add_generation_prompt=True,
        )
    except (jinja2.TemplateError, ValueError, TypeError, KeyError) as error:
        raise MissingChatTemplateError(f"the chat template cannot be rendered: {error}") from None


def _check_targets(skeleton: nn.Module, config: PretrainedConfig, given: list[str] | None) -> list[str]:
    model_type = str(getattr(config, "model_type", ""))
    targets = list(given) if given else list(DEFAULT_TARGET_MODULES.get(model_type, ()))
    if not targets:
        raise TargetModulesNotFoundError(
            f"no default target modules for model type {model_type!r}; pass --target-modules (CLI) or "
            "'target_modules' (API)"
        )
    try:
        resolve_target_names(skeleton, LoraSPConfig(target_modules=tuple(targets)))
    except ValueError as error:
        raise TargetModulesNotFoundError(str(error)) from None
    return targets
