"""`integrations` of a fine-tuning job as OpenAI's jobs API takes them: a Weights & Biases run.

`{"type": "wandb", "wandb": {"project": ..., "name": ..., "entity": ..., "tags": [...]}}`: the worker
logs the job's config and every step's metrics to that W&B run. Any other `type` is a 400 naming
`integrations.<i>.type`. The W&B API key is a deployment setting, never part of a request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

# One job logs to one W&B run: a second integration would only log the same metrics again.
MAX_INTEGRATIONS = 1
MAX_WANDB_TAGS = 32


def _printable(value: str) -> str:
    """W&B shows these as names and tags: no control characters, and no lone surrogates (which JSON
    escapes can carry but neither PostgreSQL text nor W&B can hold)."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ValueError("must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


# W&B refuses / \ # ? % : in project and entity names (they are parts of a run's path).
WandbPath = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[^/\\#?%:]+$"),
    AfterValidator(_printable),
]
WandbName = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(_printable)]
WandbTag = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_printable)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class WandbIntegrationParams(_Strict):
    project: WandbPath = Field(description="The W&B project the run is created in")
    name: WandbName | None = Field(default=None, description="The run's display name; default: the job id")
    entity: WandbPath | None = Field(
        default=None, description="The W&B team or user; default: the API key's default entity"
    )
    tags: list[WandbTag] | None = Field(
        default=None, max_length=MAX_WANDB_TAGS, description="Tags added to the run's default tags"
    )


class Integration(_Strict):
    type: Literal["wandb"] = Field(description="Only 'wandb' (Weights & Biases) is supported")
    wandb: WandbIntegrationParams


def stored_integrations(integrations: list[Integration] | None) -> list[dict[str, Any]] | None:
    """What the job row keeps and echoes: every field, unset ones as null (as OpenAI echoes them)."""
    if not integrations:
        return None
    return [integration.model_dump(mode="json") for integration in integrations]
