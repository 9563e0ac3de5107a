"""`TrainingSpec`: what a fine-tuning job trains with, fully resolved, in one typed shape.

The API builds it once from the request (`api/services/job_spec.py`) and stores it on the job as JSON;
the worker reads it back (`TrainingSpec.from_job`) and turns it into the engine's configs. A knob the
request leaves out (or sets to "auto") takes the engine's own default: the field defaults of
`LoraSPConfig` and `TrainConfig` are read here, not copied. OpenAI's three knobs are service policy:
"auto" epochs, batch size and multiplier are chosen from the training file's size (`jobs/auto.py`).

Stored shape (unchanged from before this type existed): `Job.hyperparameters` holds OpenAI's trio
{n_epochs, batch_size, learning_rate_multiplier}; `Job.method` is
`{"type": t, t: {"hyperparameters": {...every knob..., "effective_learning_rate": ...}}}` with `t` one of
"supervised" / "lorasp" / "dpo" (dpo's knobs include `beta`); `Job.seed` is the seed (also the LoRA-SP
init seed).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from lorasp_core.config import LoraSPConfig
from lorasp_core.train_config import (
    BaseQuantization,
    GradientCheckpointing,
    MixedPrecision,
    TaskType,
    TrainConfig,
)
from lorasp_service.jobs.auto import AUTO_LEARNING_RATE_MULTIPLIER, TARGET_EPOCHS
from lorasp_service.orm import Job

MethodType = Literal["supervised", "lorasp", "dpo"]
TargetModules = tuple[str, ...] | Literal["all-linear"] | None


def _field_defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


LORA_DEFAULTS = _field_defaults(LoraSPConfig)
TRAIN_DEFAULTS = _field_defaults(TrainConfig)
# Without a training file to size (a spec built directly), "auto" is OpenAI's usual 3 epochs and a
# multiplier of 1.0; the API resolves "auto" from the file by `auto.auto_hyperparameters`.
AUTO_N_EPOCHS = TARGET_EPOCHS
# What a job keeps as models: its final model and the checkpoints of the epochs before it
# (`model_checkpoints`); the whole validation file is evaluated at the end of each of these epochs.
KEPT_EPOCH_CHECKPOINTS = 2
FULL_VALIDATION_EPOCHS = KEPT_EPOCH_CHECKPOINTS + 1
# A spec built without a training file to size validates the sample every this many steps.
DEFAULT_EVAL_EVERY = 10
# The sample validated every `eval_every` steps: one batch, but never fewer examples than this.
MIN_VALIDATION_SAMPLE = 8
# Keys of `Job.hyperparameters` (OpenAI's trio), in the order the API has always stored them.
OPENAI_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
# Keys the worker adds to the stored hyperparameters once it knows its hardware
# (`ResolvedPrecision.to_dict()`: the precision that ran and the frozen base's dtype); not spec knobs.
RESOLVED_BY_WORKER = ("precision", "base_dtype")


class InvalidSpecError(ValueError):
    """A stored spec that does not parse (a job written by hand, or by an incompatible version)."""


@dataclass(frozen=True)
class TrainingSpec:
    seed: int
    mask_seed: int
    method_type: MethodType = "supervised"
    n_epochs: int = AUTO_N_EPOCHS
    batch_size: int = TRAIN_DEFAULTS["batch_size"]
    learning_rate_multiplier: float = AUTO_LEARNING_RATE_MULTIPLIER
    learning_rate: float = TRAIN_DEFAULTS["learning_rate"]
    rank: int = LORA_DEFAULTS["r"]
    alpha: float = LORA_DEFAULTS["alpha"]
    dropout: float = LORA_DEFAULTS["dropout"]
    freeze_ratio: float = LORA_DEFAULTS["freeze_ratio"]
    target_modules: TargetModules = LORA_DEFAULTS["target_modules"]  # None: per-architecture default
    weight_decay: float = TRAIN_DEFAULTS["weight_decay"]
    warmup_ratio: float = TRAIN_DEFAULTS["warmup_ratio"]
    max_length: int = TRAIN_DEFAULTS["max_length"]
    eval_every: int = DEFAULT_EVAL_EVERY  # steps between validations on the fixed sample
    beta: float = TRAIN_DEFAULTS["dpo_beta"]  # dpo only (stored and used for that method alone)
    # as requested: "auto" is resolved on the worker, from its hardware, into RESOLVED_BY_WORKER's keys
    mixed_precision: MixedPrecision = TRAIN_DEFAULTS["mixed_precision"]
    gradient_checkpointing: GradientCheckpointing = TRAIN_DEFAULTS["gradient_checkpointing"]
    processes: int = TRAIN_DEFAULTS["processes"]  # data-parallel ranks (a spec stored before: 1)
    # how the frozen base's linears are held; the adapter is served on a base held the same way
    base_quantization: BaseQuantization = TRAIN_DEFAULTS["base_quantization"]

    @property
    def effective_learning_rate(self) -> float:
        """What the optimizer uses: the base learning rate times OpenAI's multiplier."""
        return self.learning_rate * self.learning_rate_multiplier

    # --- the stored JSON -------------------------------------------------------------------------

    def hyperparameters_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in OPENAI_HYPERPARAMETERS}

    def method_json(self) -> dict[str, Any]:
        targets = self.target_modules
        resolved = {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
            "learning_rate": self.learning_rate,
            "effective_learning_rate": self.effective_learning_rate,
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "freeze_ratio": self.freeze_ratio,
            "target_modules": list(targets) if isinstance(targets, tuple) else targets,
            "mask_seed": self.mask_seed,
            "weight_decay": self.weight_decay,
            "warmup_ratio": self.warmup_ratio,
            "max_length": self.max_length,
            "eval_every": self.eval_every,
            "mixed_precision": self.mixed_precision,
            "gradient_checkpointing": self.gradient_checkpointing,
            "processes": self.processes,
            "base_quantization": self.base_quantization,
        }
        if self.method_type == "dpo":
            resolved["beta"] = self.beta
        return {"type": self.method_type, self.method_type: {"hyperparameters": resolved}}

    def store_on(self, job: Job) -> None:
        job.seed, job.hyperparameters, job.method = self.seed, self.hyperparameters_json(), self.method_json()

    @classmethod
    def from_json(cls, method: dict[str, Any], seed: int) -> TrainingSpec:
        """Parse `Job.method` (+ `Job.seed`) as stored by `method_json`; InvalidSpecError if it does not."""
        try:
            method_type = method["type"]
            values = dict(method[method_type]["hyperparameters"])
        except (KeyError, TypeError) as error:
            raise InvalidSpecError(f"the stored method has no resolved hyperparameters ({error!r})") from None
        values.pop("effective_learning_rate", None)  # derived; recomputed from its two factors
        for name in RESOLVED_BY_WORKER:  # what the run resolved, reported beside what was asked for
            values.pop(name, None)
        try:
            document = json.dumps({**values, "seed": seed, "method_type": method_type})
            # strict JSON mode: a stored "8" is not silently the rank 8 (ints still pass as floats).
            return _ADAPTER.validate_json(document, strict=True)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise InvalidSpecError(problems) from None

    @classmethod
    def from_job(cls, job: Job) -> TrainingSpec:
        return cls.from_json(job.method, job.seed)

    # --- the engine's configs --------------------------------------------------------------------

    def to_lora_config(self) -> LoraSPConfig:
        return LoraSPConfig(
            r=self.rank,
            alpha=self.alpha,
            dropout=self.dropout,
            target_modules=self.target_modules,
            freeze_ratio=self.freeze_ratio,
            mask_seed=self.mask_seed,
            init_seed=self.seed,
        )

    def to_train_config(
        self,
        task: TaskType,
        *,
        checkpoint_dir: Path | None = None,
        resume_from: Path | None = None,
        checkpoint_every_steps: int | None = None,
    ) -> TrainConfig:
        return TrainConfig(
            task=task,
            epochs=self.n_epochs,
            batch_size=self.batch_size,
            learning_rate=self.effective_learning_rate,
            weight_decay=self.weight_decay,
            warmup_ratio=self.warmup_ratio,
            max_length=self.max_length,
            seed=self.seed,
            eval_every_steps=self.eval_every,
            eval_sample_size=max(self.batch_size, MIN_VALIDATION_SAMPLE),
            mixed_precision=self.mixed_precision,
            gradient_checkpointing=self.gradient_checkpointing,
            base_quantization=self.base_quantization,
            full_eval_epochs=FULL_VALIDATION_EPOCHS,
            checkpoint_every_steps=checkpoint_every_steps,
            checkpoint_dir=str(checkpoint_dir) if checkpoint_dir is not None else None,
            resume_from=str(resume_from) if resume_from is not None else None,
            objective="dpo" if self.method_type == "dpo" else "supervised",
            dpo_beta=self.beta,
            processes=self.processes,
        )


_ADAPTER: TypeAdapter[TrainingSpec] = TypeAdapter(TrainingSpec)
