"""lorasp_core: the LoRA-SP engine (adapters, training, datasets, base models, serving).

Pure PyTorch + transformers. Public names are imported lazily so that `import lorasp_core`
stays cheap and a submodule can be used on its own.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # What `__getattr__` resolves at run time, spelled out for type checkers: without these every
    # `from lorasp_core import X` is `Any` and callers go unchecked. tests/core/test_exports.py keeps
    # this list and `_EXPORTS` equal.
    from lorasp_core.adapters import (
        AdapterMetadata,
        apply_lorasp,
        load_adapter,
        read_adapter_metadata,
        save_adapter,
        trainable_parameters,
    )
    from lorasp_core.config import DEFAULT_TARGET_MODULES, LoraSPConfig
    from lorasp_core.data import (
        ChatExample,
        ClassificationExample,
        CompletionExample,
        DatasetError,
        DatasetFormat,
        DatasetProblem,
        DatasetReport,
        label_names_for,
        read_examples,
        validate_dataset,
    )
    from lorasp_core.evaluation import evaluate
    from lorasp_core.layers import LoraSPLinear
    from lorasp_core.models import (
        CATALOG,
        CatalogEntry,
        LoadedModel,
        ModelUnavailableError,
        load_base_model,
        make_tiny_tokenizer,
    )
    from lorasp_core.serving import AdapterLoadError, ServingEngine
    from lorasp_core.trainer import ProgressEvent, TrainCallback, TrainConfig, TrainResult, train

_EXPORTS: dict[str, str] = {
    # adapter
    "LoraSPConfig": "lorasp_core.config",
    "DEFAULT_TARGET_MODULES": "lorasp_core.config",
    "LoraSPLinear": "lorasp_core.layers",
    "apply_lorasp": "lorasp_core.adapters",
    "trainable_parameters": "lorasp_core.adapters",
    "save_adapter": "lorasp_core.adapters",
    "load_adapter": "lorasp_core.adapters",
    "read_adapter_metadata": "lorasp_core.adapters",
    "AdapterMetadata": "lorasp_core.adapters",
    # training
    "TrainConfig": "lorasp_core.trainer",
    "TrainCallback": "lorasp_core.trainer",
    "ProgressEvent": "lorasp_core.trainer",
    "TrainResult": "lorasp_core.trainer",
    "train": "lorasp_core.trainer",
    "evaluate": "lorasp_core.evaluation",
    # data
    "DatasetFormat": "lorasp_core.data",
    "DatasetReport": "lorasp_core.data",
    "DatasetProblem": "lorasp_core.data",
    "DatasetError": "lorasp_core.data",
    "ChatExample": "lorasp_core.data",
    "CompletionExample": "lorasp_core.data",
    "ClassificationExample": "lorasp_core.data",
    "validate_dataset": "lorasp_core.data",
    "read_examples": "lorasp_core.data",
    "label_names_for": "lorasp_core.data",
    # base models
    "CATALOG": "lorasp_core.models",
    "CatalogEntry": "lorasp_core.models",
    "LoadedModel": "lorasp_core.models",
    "load_base_model": "lorasp_core.models",
    "ModelUnavailableError": "lorasp_core.models",
    "make_tiny_tokenizer": "lorasp_core.models",
    # serving
    "ServingEngine": "lorasp_core.serving",
    "AdapterLoadError": "lorasp_core.serving",
}

# == sorted(_EXPORTS); a literal so that linters see the re-exports.
__all__ = [
    "AdapterLoadError",
    "AdapterMetadata",
    "CATALOG",
    "CatalogEntry",
    "ChatExample",
    "ClassificationExample",
    "CompletionExample",
    "DEFAULT_TARGET_MODULES",
    "DatasetError",
    "DatasetFormat",
    "DatasetProblem",
    "DatasetReport",
    "LoadedModel",
    "LoraSPConfig",
    "LoraSPLinear",
    "ModelUnavailableError",
    "ProgressEvent",
    "ServingEngine",
    "TrainCallback",
    "TrainConfig",
    "TrainResult",
    "apply_lorasp",
    "evaluate",
    "label_names_for",
    "load_adapter",
    "load_base_model",
    "make_tiny_tokenizer",
    "read_adapter_metadata",
    "read_examples",
    "save_adapter",
    "train",
    "trainable_parameters",
    "validate_dataset",
]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'lorasp_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
