"""Base models this deployment offers a tenant: the registry's ready rows (lorasp_service.base_models),
catalog rows filtered by `settings.enabled_models`, plus the tenant's private models."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.schemas.models import ModelObject
from lorasp_core.data import DatasetFormat
from lorasp_service import base_models
from lorasp_service.orm import BaseModelRecord
from lorasp_service.settings import Settings

# Dataset formats a base model's task can train on.
FORMATS_FOR_TASK: dict[str, frozenset[str]] = {
    "causal-lm": frozenset({DatasetFormat.CHAT.value, DatasetFormat.PROMPT_COMPLETION.value}),
    "seq-cls": frozenset({DatasetFormat.CLASSIFICATION.value}),
}
# What a dpo job trains on (a causal-lm model only); supervised jobs refuse these files.
PREFERENCE_FORMATS: frozenset[str] = frozenset({DatasetFormat.PREFERENCE.value})


def offered_base_model(
    session: Session, settings: Settings, tenant_id: str, name: str
) -> BaseModelRecord | None:
    return base_models.offered_model(session, settings, tenant_id, name)


def base_model_object(row: BaseModelRecord) -> ModelObject:
    return ModelObject.base(row.name, row.task, row.description)


def is_base_model(session: Session, settings: Settings, tenant_id: str, name: str) -> bool:
    return offered_base_model(session, settings, tenant_id, name) is not None
