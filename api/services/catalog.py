"""Base models this deployment offers: the lorasp_core catalog filtered by `settings.enabled_models`."""

from __future__ import annotations

from functools import lru_cache

from api.schemas.models import ModelObject
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


def base_model_objects(settings: Settings) -> list[ModelObject]:
    """The enabled base models as `GET /v1/models` lists them (built once per set of enabled names)."""
    enabled = None if settings.enabled_models is None else tuple(settings.enabled_models)
    return list(_base_model_objects(enabled))


@lru_cache(maxsize=8)
def _base_model_objects(enabled: tuple[str, ...] | None) -> tuple[ModelObject, ...]:
    return tuple(
        ModelObject.base(name, entry.task, entry.description)
        for name, entry in CATALOG.items()
        if enabled is None or name in enabled
    )


def is_base_model(name: str) -> bool:
    return name in CATALOG
