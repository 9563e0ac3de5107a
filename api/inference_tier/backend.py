"""`ServingBackend`: what the API's services use of a serving engine, as one typed Protocol.

The in-process `lorasp_core.serving.ServingEngine` satisfies it structurally (the embedded default);
`InferenceRouter` satisfies it by routing every call to a `lorasp inference` process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from lorasp_core.serving import (
    AdapterCacheCounters,
    AdapterInfo,
    BatchingFigures,
    ClassificationResult,
    GenerationRequest,
    GenerationStream,
)
from lorasp_core.serving.adapter_files import ParsedAdapter


class ServingBackend(Protocol):
    def check_adapter(
        self, adapter_id: str, path: Path | str, base_model: str
    ) -> tuple[ParsedAdapter, tuple[str, ...] | None]: ...

    def load_adapter(
        self,
        adapter_id: str,
        path: Path | str,
        base_model: str,
        *,
        pin: bool = False,
        owner: str | None = None,
    ) -> AdapterInfo: ...

    def unload_adapter(self, adapter_id: str) -> None: ...

    def pin_adapter(self, adapter_id: str, pinned: bool = True) -> None: ...

    def adapter_info(self, adapter_id: str) -> AdapterInfo: ...

    def loaded_adapters(self) -> list[AdapterInfo]: ...

    def generate(self, request: GenerationRequest) -> GenerationStream: ...

    def classify(
        self, model: str, adapter_id: str | None, texts: list[str]
    ) -> list[ClassificationResult]: ...

    # figures read by the metrics collector at scrape time
    @property
    def batch_sizes(self) -> list[int]: ...

    def pending_requests(self) -> int: ...

    def batching_figures(self) -> BatchingFigures: ...

    def cache_counters(self) -> AdapterCacheCounters: ...

    def resident_adapter_count(self) -> int: ...

    def close(self) -> None: ...
