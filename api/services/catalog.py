"""Base models this deployment offers: the lorasp_core catalog filtered by `settings.enabled_models`."""

from __future__ import annotations

from lorasp_core.data import DatasetFormat
from lorasp_core.models import CATALOG, CatalogEntry
from lorasp_service.settings import Settings

# Dataset formats a base model's task can train on.
FORMATS_FOR_TASK: dict[str, frozenset[str]] = {
    "causal-lm": frozenset({DatasetFormat.CHAT.value, DatasetFormat.PROMPT_COMPLETION.value}),
    "seq-cls": frozenset({DatasetFormat.CLASSIFICATION.value}),
}


def enabled_base_models(settings: Settings) -> dict[str, CatalogEntry]:
    enabled = settings.enabled_models
    return {name: entry for name, entry in CATALOG.items() if enabled is None or name in enabled}


def is_base_model(name: str) -> bool:
    return name in CATALOG
