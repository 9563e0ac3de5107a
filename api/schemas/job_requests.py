"""Body of `POST /v1/fine_tuning/jobs`: OpenAI's shape (methods `supervised`, `dpo`) plus `lorasp`.

Unknown fields are rejected (400 naming them) and types are strict, so a mistyped request never trains
with silently changed values. Values that may be "auto" use plain validators so that an error's
location is the field itself (`hyperparameters.n_epochs`), not a union branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    model_validator,
)

from api.schemas.job_integrations import MAX_INTEGRATIONS, Integration
from lorasp_core.train_config import BASE_QUANTIZATIONS, MIXED_PRECISIONS, BaseQuantization, MixedPrecision

MAX_EPOCHS = 50
MAX_BATCH_SIZE = 512
MAX_LR_MULTIPLIER = 100.0
MAX_TARGET_MODULES = 64
MAX_METADATA_PAIRS = 16
MAX_DPO_BETA = 2.0  # OpenAI's upper bound for beta


def _int_or_auto(low: int, high: int) -> Callable[[Any], int | str]:
    def check(value: Any) -> int | str:
        if value == "auto":
            return "auto"
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high} or 'auto'")
        return value

    return check


def _multiplier_or_auto(value: Any) -> float | str:
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a number > 0 and <= {MAX_LR_MULTIPLIER:g}, or 'auto'")
    if not 0 < value <= MAX_LR_MULTIPLIER:
        raise ValueError(f"expected a number > 0 and <= {MAX_LR_MULTIPLIER:g}, or 'auto'")
    return float(value)


def _target_modules(value: Any) -> list[str] | str | None:
    if value is None or value == "all-linear":
        return value  # type: ignore[no-any-return]
    if (
        isinstance(value, list)
        and 0 < len(value) <= MAX_TARGET_MODULES
        and all(isinstance(name, str) and 0 < len(name) <= 128 for name in value)
    ):
        return list(value)
    raise ValueError(
        f"expected 'all-linear' or a list of 1 to {MAX_TARGET_MODULES} module names (non-empty strings)"
    )


NEpochs = Annotated[
    int | Literal["auto"],
    PlainValidator(_int_or_auto(1, MAX_EPOCHS), json_schema_input_type=int | Literal["auto"]),
]
BatchSize = Annotated[
    int | Literal["auto"],
    PlainValidator(_int_or_auto(1, MAX_BATCH_SIZE), json_schema_input_type=int | Literal["auto"]),
]
LearningRateMultiplier = Annotated[
    float | Literal["auto"],
    PlainValidator(_multiplier_or_auto, json_schema_input_type=float | Literal["auto"]),
]
TargetModules = Annotated[
    list[str] | Literal["all-linear"] | None,
    PlainValidator(_target_modules, json_schema_input_type=list[str] | Literal["all-linear"] | None),
]


def _beta_or_auto(value: Any) -> float | str:
    if value == "auto":
        return "auto"
    valid = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not valid or not 0 < value <= MAX_DPO_BETA:
        raise ValueError(f"expected a number > 0 and <= {MAX_DPO_BETA:g}, or 'auto'")
    return float(value)


Beta = Annotated[
    float | Literal["auto"],
    PlainValidator(_beta_or_auto, json_schema_input_type=float | Literal["auto"]),
    Field(description="DPO's beta: how strongly the model is held to the reference (default 0.1)"),
]


def _bool_or_auto(value: Any) -> bool | str:
    if value == "auto" or isinstance(value, bool):
        return value  # type: ignore[no-any-return]
    raise ValueError("expected true, false or 'auto'")


def _one_of(names: tuple[str, ...]) -> Callable[[Any], str]:
    """A strict validator of a string option: exactly one of `names` (no coercion), else the choices."""

    def check(value: Any) -> str:
        if isinstance(value, str) and value in names:
            return value
        raise ValueError(f"expected one of {', '.join(repr(name) for name in names)}")

    return check


MixedPrecisionOption = Annotated[
    MixedPrecision,
    PlainValidator(_one_of(MIXED_PRECISIONS), json_schema_input_type=MixedPrecision),
    Field(description="Autocast precision; 'auto' picks bf16 where the worker's hardware runs it fast"),
]


BaseQuantizationOption = Annotated[
    BaseQuantization,
    PlainValidator(_one_of(BASE_QUANTIZATIONS), json_schema_input_type=BaseQuantization),
    Field(
        description="How the frozen base's linear weights are held: 'none', 'int8' (weight-only, CPU and "
        "GPU) or 'nf4' (CUDA workers with bitsandbytes); the adapter is served on the same base"
    ),
]
GradientCheckpointingOption = Annotated[
    bool | Literal["auto"],
    PlainValidator(_bool_or_auto, json_schema_input_type=bool | Literal["auto"]),
    Field(description="Recompute activations in backward to save memory; 'auto' is off for now"),
]
EvalEvery = Annotated[
    int | Literal["auto"],
    PlainValidator(_int_or_auto(1, 1_000_000), json_schema_input_type=int | Literal["auto"]),
    Field(description="Steps between validations on a fixed sample of the validation file"),
]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SupervisedHyperparameters(StrictModel):
    """OpenAI's three knobs; omitted = "auto"."""

    n_epochs: NEpochs | None = None
    batch_size: BatchSize | None = None
    learning_rate_multiplier: LearningRateMultiplier | None = None


class LoraSPHyperparameters(SupervisedHyperparameters):
    """LoRA-SP adapter and optimizer settings; omitted = the defaults documented in docs/api.md."""

    rank: int | None = Field(default=None, ge=1, le=256)
    alpha: float | None = Field(default=None, gt=0, le=4096)
    dropout: float | None = Field(default=None, ge=0, lt=1)
    freeze_ratio: float | None = Field(default=None, ge=0, lt=1)
    target_modules: TargetModules = None
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    weight_decay: float | None = Field(default=None, ge=0, le=1)
    warmup_ratio: float | None = Field(default=None, ge=0, lt=1)
    max_length: int | None = Field(default=None, ge=16, le=32768)
    eval_every: EvalEvery | None = None
    # Seeds which entries are frozen; default: the job's seed (a continued job: its parent's mask_seed).
    mask_seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    mixed_precision: MixedPrecisionOption | None = None
    gradient_checkpointing: GradientCheckpointingOption | None = None
    # Data-parallel ranks for the job (CUDA: one GPU each); batch_size is the global batch, split
    # evenly between them. At most the server's LORASP_MAX_PROCESSES.
    processes: int | None = Field(default=None, ge=1, le=1024)
    base_quantization: BaseQuantizationOption | None = None


class DPOHyperparameters(SupervisedHyperparameters):
    """OpenAI's dpo knobs: its three plus beta."""

    beta: Beta | None = None


class DPOMethodParams(StrictModel):
    hyperparameters: DPOHyperparameters = Field(default_factory=DPOHyperparameters)


class SupervisedMethodParams(StrictModel):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class LoraSPMethodParams(StrictModel):
    hyperparameters: LoraSPHyperparameters = Field(default_factory=LoraSPHyperparameters)


METHOD_TYPES = ("lorasp", "supervised", "dpo")


class Method(StrictModel):
    """`{"type": t, t: {"hyperparameters": {...}}}` with t "lorasp", "supervised" or "dpo"."""

    type: Literal["lorasp", "supervised", "dpo"]
    lorasp: LoraSPMethodParams | None = None
    supervised: SupervisedMethodParams | None = None
    dpo: DPOMethodParams | None = None

    @model_validator(mode="after")
    def _only_the_chosen_method(self) -> Method:
        for other in METHOD_TYPES:
            if other != self.type and getattr(self, other) is not None:
                raise ValueError(f"'{other}' is only allowed when type is '{other}'")
        return self

    def hyperparameters(self) -> LoraSPHyperparameters:
        """The method's hyperparameters as LoRA-SP ones (supervised and dpo = LoRA-SP with defaults)."""
        if self.type == "lorasp":
            return (self.lorasp or LoraSPMethodParams()).hyperparameters
        chosen: SupervisedHyperparameters = (
            (self.dpo or DPOMethodParams()).hyperparameters
            if self.type == "dpo"
            else (self.supervised or SupervisedMethodParams()).hyperparameters
        )
        trio = chosen.model_dump(exclude_none=True, include=set(SupervisedHyperparameters.model_fields))
        return LoraSPHyperparameters(**trio)

    def beta(self) -> float | None:
        """A dpo job's beta; None: the default (also for "auto")."""
        beta = (self.dpo or DPOMethodParams()).hyperparameters.beta if self.type == "dpo" else None
        return beta if isinstance(beta, float) else None


def _storable_text(value: str) -> str:
    """PostgreSQL text holds neither NUL nor lone UTF-16 surrogates (which JSON escapes can carry)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


Suffix = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_storable_text)]
MetadataValue = Annotated[str, StringConstraints(max_length=512), AfterValidator(_storable_text)]


class CreateFineTuningJobRequest(StrictModel):
    model: str = Field(min_length=1, max_length=256, description="A base model of GET /v1/models")
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(default=None, min_length=1, max_length=64)
    hyperparameters: SupervisedHyperparameters | None = Field(
        default=None, description="Deprecated by OpenAI in favour of method; the method's values win"
    )
    method: Method | None = None
    suffix: Suffix | None = Field(
        default=None, description="Up to 64 of A-Z a-z 0-9 . _ - (it becomes part of the model id)"
    )
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None, max_length=MAX_METADATA_PAIRS)
    integrations: list[Integration] | None = Field(
        default=None, max_length=MAX_INTEGRATIONS, description="A Weights & Biases run to log the job to"
    )
