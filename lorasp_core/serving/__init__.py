"""Multi-adapter inference: one resident copy per base model, many LoRA(-SP) adapters batched per row."""

from __future__ import annotations

from lorasp_core.serving.cache import AdapterCacheCounters
from lorasp_core.serving.continuous import EngineClosedError
from lorasp_core.serving.engine import ServingEngine
from lorasp_core.serving.generation import GenerationStream
from lorasp_core.serving.manager import AdapterManager
from lorasp_core.serving.multi_lora import MultiAdapterLinear, RowDispatchModule, SlotSelection
from lorasp_core.serving.tool_output import ParsedToolCall, ToolAnswer, ToolCallReader, parse_tool_calls
from lorasp_core.serving.types import (
    AdapterCacheFullError,
    AdapterInfo,
    AdapterLoadError,
    AdapterQuotaError,
    BaseModelBundle,
    BatchingFigures,
    BatchingMode,
    ChatTemplateError,
    ClassificationResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    GrammarError,
    ResponseFormat,
    ServingOverloadedError,
    TemplateBudget,
    TokenLogprob,
    ToolChoice,
    ToolsUnsupportedError,
    TopLogprob,
    UnknownAdapterError,
)

__all__ = [
    "AdapterCacheCounters",
    "AdapterCacheFullError",
    "AdapterInfo",
    "AdapterLoadError",
    "AdapterManager",
    "AdapterQuotaError",
    "BaseModelBundle",
    "BatchingFigures",
    "BatchingMode",
    "ChatTemplateError",
    "ClassificationResult",
    "EngineClosedError",
    "GenerationChunk",
    "GenerationRequest",
    "GenerationResult",
    "GenerationStream",
    "GrammarError",
    "ParsedToolCall",
    "ToolCallReader",
    "ResponseFormat",
    "TokenLogprob",
    "ToolAnswer",
    "ToolChoice",
    "ToolsUnsupportedError",
    "TopLogprob",
    "parse_tool_calls",
    "MultiAdapterLinear",
    "RowDispatchModule",
    "ServingEngine",
    "ServingOverloadedError",
    "SlotSelection",
    "TemplateBudget",
    "UnknownAdapterError",
]
