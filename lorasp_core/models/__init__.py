"""Base-model catalog: packaged real models and in-code tiny ones; nothing is downloaded at run time."""

from __future__ import annotations

from lorasp_core.models.tiny import (
    CHATML_TEMPLATE,
    TINY_BERT_NAME,
    TINY_LLAMA_NAME,
    make_tiny_tokenizer,
    tiny_random_bert,
    tiny_random_llama,
)

__all__ = [
    "CHATML_TEMPLATE",
    "TINY_BERT_NAME",
    "TINY_LLAMA_NAME",
    "make_tiny_tokenizer",
    "tiny_random_bert",
    "tiny_random_llama",
]
