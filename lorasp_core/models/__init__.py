"""Base-model catalog: packaged real models and in-code tiny ones; nothing is downloaded at run time."""

from __future__ import annotations

from lorasp_core.models.catalog import (
    CACHE_ENV_VAR,
    CATALOG,
    TASK_TYPES,
    CatalogEntry,
    LoadedModel,
    ModelUnavailableError,
    TaskType,
    catalog_names,
    default_cache_dir,
    find_package_dir,
)
from lorasp_core.models.loading import infer_task, load_base_model, load_base_tokenizer
from lorasp_core.models.tiny import (
    CHATML_TEMPLATE,
    TINY_BERT_NAME,
    TINY_LLAMA_NAME,
    make_tiny_tokenizer,
    make_tiny_tool_tokenizer,
    tiny_random_bert,
    tiny_random_llama,
)

__all__ = [
    "CACHE_ENV_VAR",
    "CATALOG",
    "CHATML_TEMPLATE",
    "TASK_TYPES",
    "TINY_BERT_NAME",
    "TINY_LLAMA_NAME",
    "CatalogEntry",
    "LoadedModel",
    "ModelUnavailableError",
    "TaskType",
    "catalog_names",
    "default_cache_dir",
    "find_package_dir",
    "infer_task",
    "load_base_model",
    "load_base_tokenizer",
    "make_tiny_tokenizer",
    "make_tiny_tool_tokenizer",
    "tiny_random_bert",
    "tiny_random_llama",
]
