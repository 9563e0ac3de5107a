"""`load_base_model`: a catalog name or a local Hugging Face directory -> model + tokenizer.

Every model is returned in `dtype` (default float32), on CPU, in eval mode, with
`model.config.name_or_path` set to the name it was loaded by (saved adapters record it as
`base_model_name_or_path`). Nothing is downloaded: every `from_pretrained` call gets a local path and
`local_files_only=True`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lorasp_core.models import catalog
from lorasp_core.models.catalog import (
    CATALOG,
    MINILM_NAME,
    MINILM_SUBDIR,
    SMOLLM2_NAME,
    TASK_TYPES,
    CatalogEntry,
    LoadedModel,
    TaskType,
)
from lorasp_core.models.gguf_cache import cached_smollm2, smollm2_tokenizer
from lorasp_core.models.tiny import (
    TINY_BERT_NAME,
    TINY_LLAMA_NAME,
    make_tiny_tokenizer,
    prepare_for_inference,
    tiny_random_bert,
    tiny_random_llama,
)

DEFAULT_NUM_LABELS = 2
LOAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def load_base_model(
    name_or_path: str,
    *,
    task: TaskType | None = None,
    num_labels: int | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    name: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """Load a catalog model by name, or a local Hugging Face model directory (one with config.json).

    `task` defaults to the catalog entry's task (or, for a directory, is inferred from
    `config.architectures`). `num_labels` (seq-cls only, default 2) sizes a fresh classification head
    whose initial weights depend only on `seed`. `cache_dir` holds dequantised GGUF models (default:
    `$LORASP_MODEL_CACHE` or `~/.cache/lorasp/models`). `name` (a directory only) is the name the
    model is known by (`config.name_or_path`; default: the path), e.g. a registered base model's.
    `dtype` is what the weights are loaded in (float32, bfloat16 or float16).
    """
    if dtype not in LOAD_DTYPES:
        raise ValueError(f"dtype must be one of {[str(d) for d in LOAD_DTYPES]}, got {dtype}")
    if task is not None and task not in TASK_TYPES:
        raise ValueError(f"task must be one of {list(TASK_TYPES)}, got {task!r}")
    if num_labels is not None and num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    entry = CATALOG.get(name_or_path)
    if entry is not None:
        return _finish_in(dtype, _load_catalog_model(entry, task, num_labels, cache_dir, seed))
    local_dir = Path(name_or_path).expanduser()
    if (local_dir / "config.json").is_file():
        return _finish_in(
            dtype, _load_local_directory(name or name_or_path, local_dir, task, num_labels, seed, dtype)
        )
    raise ValueError(
        f"unknown base model {name_or_path!r}: not a catalog name ({', '.join(catalog.catalog_names())}) "
        "and not a local directory containing config.json"
    )


def load_base_tokenizer(name_or_path: str, *, cache_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer `load_base_model(name_or_path)` would return, without loading any weights
    (what a file check against a base model's chat template needs)."""
    entry = CATALOG.get(name_or_path)
    if entry is not None:
        if entry.name == SMOLLM2_NAME:
            cache_root = (
                Path(cache_dir).expanduser() if cache_dir is not None else catalog.default_cache_dir()
            )
            return smollm2_tokenizer(entry, cache_root)
        if entry.name == MINILM_NAME:
            model_dir = catalog.packaged_file(entry, MINILM_SUBDIR)
            return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        return make_tiny_tokenizer()
    local_dir = Path(name_or_path).expanduser()
    if not (local_dir / "config.json").is_file():
        raise ValueError(f"unknown base model {name_or_path!r}: not a catalog name and not a model directory")
    try:
        return AutoTokenizer.from_pretrained(str(local_dir), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"local model directory {local_dir} has no usable tokenizer files: {error}"
        ) from error


def _load_catalog_model(
    entry: CatalogEntry,
    task: TaskType | None,
    num_labels: int | None,
    cache_dir: str | Path | None,
    seed: int,
) -> LoadedModel:
    if task is not None and task != entry.task:
        raise ValueError(f"base model {entry.name!r} supports task {entry.task!r}, not {task!r}")
    if entry.task == "causal-lm" and num_labels is not None:
        raise ValueError(f"num_labels applies to seq-cls models; {entry.name!r} is {entry.task}")
    labels = num_labels or DEFAULT_NUM_LABELS
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    if entry.name == SMOLLM2_NAME:
        cache_root = Path(cache_dir).expanduser() if cache_dir is not None else catalog.default_cache_dir()
        model, tokenizer = cached_smollm2(entry, cache_root)
    elif entry.name == MINILM_NAME:
        model_dir = catalog.packaged_file(entry, MINILM_SUBDIR)
        model = _seeded_sequence_classifier(model_dir, labels, seed)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    elif entry.name == TINY_LLAMA_NAME:
        model, tokenizer = tiny_random_llama(seed), make_tiny_tokenizer()
    elif entry.name == TINY_BERT_NAME:
        model, tokenizer = tiny_random_bert(labels, seed), make_tiny_tokenizer()
    else:  # pragma: no cover - every CATALOG entry has a branch above
        raise AssertionError(f"no loader for catalog entry {entry.name!r}")
    return _finish(entry.name, entry.task, model, tokenizer)


def _load_local_directory(
    name: str, local_dir: Path, task: TaskType | None, num_labels: int | None, seed: int, dtype: torch.dtype
) -> LoadedModel:
    resolved_task = task or infer_task(local_dir)
    model: PreTrainedModel
    if resolved_task == "causal-lm":
        if num_labels is not None:
            raise ValueError(f"num_labels applies to seq-cls models; {name!r} is loaded as causal-lm")
        model = AutoModelForCausalLM.from_pretrained(str(local_dir), local_files_only=True, dtype=dtype)
    else:
        model = _seeded_sequence_classifier(local_dir, num_labels, seed, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(local_dir), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"local model directory {local_dir} has no usable tokenizer files: {error}"
        ) from error
    return _finish(name, resolved_task, model, tokenizer)


def infer_task(local_dir: Path) -> TaskType:
    """causal-lm or seq-cls from `config.architectures` (`...ForCausalLM`, `...ForSequenceClassification`)."""
    config: dict[str, Any] = json.loads((local_dir / "config.json").read_text(encoding="utf-8"))
    architectures = [str(name) for name in config.get("architectures") or []]
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return "causal-lm"
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return "seq-cls"
    raise ValueError(
        f"cannot infer the task of {local_dir} from architectures {architectures}; "
        f"pass task= one of {list(TASK_TYPES)}"
    )


def _seeded_sequence_classifier(
    model_dir: Path, num_labels: int | None, seed: int, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """from_pretrained with any missing weights (the fresh head) initialised from `seed` alone.

    The initialisation runs inside `fork_rng`, so the caller's global torch RNG is left untouched.
    """
    extra: dict[str, Any] = {} if num_labels is None else {"num_labels": num_labels}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: PreTrainedModel = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), local_files_only=True, dtype=dtype, **extra
        )
    return model


def _finish_in(dtype: torch.dtype, loaded: LoadedModel) -> LoadedModel:
    """Catalog models are built float32; a fresh seq-cls head comes float32 too: cast what is left."""
    if any(parameter.dtype != dtype for parameter in loaded.model.parameters()):
        torch.nn.Module.to(loaded.model, dtype=dtype)  # PreTrainedModel.to's stub hides this overload
    return loaded


def _finish(
    name: str, task: TaskType, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> LoadedModel:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if task == "seq-cls" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    prepare_for_inference(model)
    model.config.name_or_path = name
    return LoadedModel(name=name, task=task, model=model, tokenizer=tokenizer)
