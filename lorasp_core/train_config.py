"""Training hyper-parameters, progress events, callbacks and the result of `train`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from lorasp_core.precision import ResolvedPrecision

TaskType = Literal["causal-lm", "seq-cls"]
# Which validation data an evaluation ran on: the fixed sample (`eval_sample_size` examples, every
# `eval_every_steps`) or the whole validation set (at the end of the last `full_eval_epochs` epochs).
EvalScope = Literal["sample", "full"]
Batching = Literal["group_by_length", "pack", "padded"]
# What the loss is: next-token cross-entropy on the labelled tokens, or DPO on preference pairs (dpo.py).
Objective = Literal["supervised", "dpo"]
MixedPrecision = Literal["auto", "bf16", "fp16", "no"]
BaseDtype = Literal["auto", "float32", "bfloat16"]
GradientCheckpointing = bool | Literal["auto"]
# How the frozen base's linear weights are held: as loaded, int8 weight-only (torchao, CPU and CUDA)
# or nf4 (bitsandbytes, CUDA only); see lorasp_core.quantization.
BaseQuantization = Literal["none", "int8", "nf4"]

# transformers.get_scheduler names that need no extra arguments (plateau needs metrics, WSD needs kwargs).
SUPPORTED_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
TASKS: tuple[TaskType, ...] = ("causal-lm", "seq-cls")
BATCHINGS: tuple[Batching, ...] = ("group_by_length", "pack", "padded")
OBJECTIVES: tuple[Objective, ...] = ("supervised", "dpo")
# The figures a dpo step reports (TRL's names): mean implicit rewards beta * (pi - ref) of the chosen
# and the rejected answers, the share of pairs whose chosen reward is higher, and the mean margin.
DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
MIXED_PRECISIONS: tuple[MixedPrecision, ...] = ("auto", "bf16", "fp16", "no")
BASE_DTYPES: tuple[BaseDtype, ...] = ("auto", "float32", "bfloat16")
BASE_QUANTIZATIONS: tuple[BaseQuantization, ...] = ("none", "int8", "nf4")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _positive_int_or_none(name: str, value: object) -> None:
    ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    _require(ok, f"{name} must be a positive integer or null, got {value!r}")


@dataclass
class TrainConfig:
    task: TaskType
    epochs: int = 1
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    grad_accum_steps: int = 1
    max_length: int = 512
    seed: int = 0
    batching: Batching = "group_by_length"
    eval_every_steps: int | None = None
    eval_sample_size: int = 32
    full_eval_epochs: int | None = None  # None: a full evaluation at the end of every epoch
    checkpoint_every_steps: int | None = None
    checkpoint_dir: str | None = None
    resume_from: str | None = None
    device: str = "auto"
    mixed_precision: MixedPrecision = "auto"
    max_steps: int | None = None
    objective: Objective = "supervised"
    dpo_beta: float = 0.1  # DPO's beta (OpenAI's and TRL's default): how far the policy may drift
    # the frozen base's dtype; "auto": bfloat16 when bf16 autocast is chosen (halves its memory and
    # spares autocast re-casting fp32 weights on every forward), else float32
    base_dtype: BaseDtype = "auto"
    # causal-lm: apply the LM head (and the loss) only at supervised positions, not at prompt tokens
    head_at_labels: bool = True
    # recompute activations in backward; "auto": off (on until an admission estimate says memory is short)
    gradient_checkpointing: GradientCheckpointing = "auto"
    # data-parallel ranks training this job (distributed.py); each takes batch_size / processes
    # examples of every micro-batch, so the global batch (and the result) is a 1-process run's
    processes: int = 1
    # the frozen base's linears quantized (QLoRA-style) before training; adapters and head stay fp32
    base_quantization: BaseQuantization = "none"

    def __post_init__(self) -> None:
        _require(self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}")
        for name in ("epochs", "batch_size", "grad_accum_steps", "max_length", "eval_sample_size"):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} must be an integer >= 1, got {value!r}",
            )
        _require(
            isinstance(self.learning_rate, int | float) and self.learning_rate > 0,
            f"learning_rate must be > 0, got {self.learning_rate!r}",
        )
        _require(
            isinstance(self.weight_decay, int | float) and self.weight_decay >= 0,
            f"weight_decay must be >= 0, got {self.weight_decay!r}",
        )
        _require(
            self.lr_scheduler in SUPPORTED_SCHEDULERS,
            f"lr_scheduler must be one of {SUPPORTED_SCHEDULERS}, got {self.lr_scheduler!r}",
        )
        _require(
            isinstance(self.warmup_ratio, int | float) and 0 <= self.warmup_ratio < 1,
            f"warmup_ratio must satisfy 0 <= warmup_ratio < 1, got {self.warmup_ratio!r}",
        )
        _require(
            self.max_grad_norm is None
            or (isinstance(self.max_grad_norm, int | float) and self.max_grad_norm > 0),
            f"max_grad_norm must be > 0 or null, got {self.max_grad_norm!r}",
        )
        _require(isinstance(self.seed, int) and self.seed >= 0, f"seed must be >= 0, got {self.seed!r}")
        _require(self.batching in BATCHINGS, f"batching must be one of {BATCHINGS}, got {self.batching!r}")
        _require(
            self.batching != "pack" or self.task == "causal-lm",
            "batching 'pack' is only for causal-lm (classification examples keep one label each)",
        )
        _require(
            self.mixed_precision in MIXED_PRECISIONS,
            f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}",
        )
        _require(
            self.base_dtype in BASE_DTYPES,
            f"base_dtype must be one of {BASE_DTYPES}, got {self.base_dtype!r}",
        )
        _require(
            isinstance(self.head_at_labels, bool),
            f"head_at_labels must be true or false, got {self.head_at_labels!r}",
        )
        _require(
            isinstance(self.gradient_checkpointing, bool) or self.gradient_checkpointing == "auto",
            f"gradient_checkpointing must be true, false or 'auto', got {self.gradient_checkpointing!r}",
        )
        _require(
            self.base_quantization in BASE_QUANTIZATIONS,
            f"base_quantization must be one of {BASE_QUANTIZATIONS}, got {self.base_quantization!r}",
        )
        _require(
            isinstance(self.device, str) and bool(self.device),
            f"device must be a device name, got {self.device!r}",
        )
        _require(
            self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}, got {self.objective!r}"
        )
        _require(
            isinstance(self.dpo_beta, int | float)
            and not isinstance(self.dpo_beta, bool)
            and self.dpo_beta > 0,
            f"dpo_beta must be > 0, got {self.dpo_beta!r}",
        )
        _require(
            self.objective != "dpo" or (self.task == "causal-lm" and self.batching != "pack"),
            "objective 'dpo' needs task 'causal-lm' and batching other than 'pack' (a pair is two sequences)",
        )
        _require(
            isinstance(self.processes, int) and not isinstance(self.processes, bool) and self.processes >= 1,
            f"processes must be an integer >= 1, got {self.processes!r}",
        )
        _require(
            self.batch_size % self.processes == 0,
            f"batch_size ({self.batch_size}) must be divisible by processes ({self.processes})",
        )
        _require(
            self.processes == 1 or self.objective != "dpo",
            "objective 'dpo' runs in one process (processes must be 1)",
        )
        for name in ("eval_every_steps", "full_eval_epochs", "checkpoint_every_steps", "max_steps"):
            _positive_int_or_none(name, getattr(self, name))
        _require(
            self.checkpoint_every_steps is None or self.checkpoint_dir is not None,
            "checkpoint_every_steps needs checkpoint_dir",
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        _require(not unknown, f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class ProgressEvent:
    step: int
    total_steps: int
    epoch: float
    train_loss: float
    learning_rate: float
    tokens_per_second: float  # real (non-padding) tokens seen per second in this run
    elapsed_seconds: float
    eta_seconds: float | None
    trained_tokens: int
    # share of this step's targets the model predicted right (argmax), before the update
    train_mean_token_accuracy: float | None = None
    eval_metrics: dict[str, float] | None = None  # on the fixed validation sample, when it ran this step
    full_eval_metrics: dict[str, float] | None = None  # on the whole validation set, when it ran this step
    # the objective's own figures of this step: for dpo, dpo.DPO_METRICS (rewards/chosen, ...)
    objective_metrics: dict[str, float] | None = None


class TrainCallback:
    """Hooks into `train`; every method is a no-op so subclasses override only what they need."""

    def on_train_begin(self, total_steps: int) -> None:
        return None

    def on_progress(self, event: ProgressEvent) -> None:
        return None

    def on_evaluate(self, step: int, metrics: dict[str, float], scope: EvalScope) -> None:
        """After each evaluation; `metrics` has loss, mean_token_accuracy (+ perplexity or accuracy)."""
        return None

    def on_checkpoint(self, step: int, path: Path) -> None:
        return None

    def on_epoch_end(self, step: int, epoch: int, model: Any) -> None:
        """After the last step of each completed epoch (`epoch` counts from 0), with the model as trained."""
        return None

    def should_stop(self) -> bool:
        """Polled before every step: return True to stop cleanly (cooperative cancellation)."""
        return False


@dataclass(frozen=True)
class TrainResult:
    steps: int
    total_steps: int
    trained_tokens: int
    train_loss: float | None  # mean loss over all steps taken (resumed runs included)
    eval_metrics: dict[str, float] | None  # the last full evaluation (None without eval data)
    cancelled: bool
    last_checkpoint: Path | None
    # per-element optimizer state at the end: "adapter" (LoRA entries), "other" (head), "total"
    optimizer_state_bytes: dict[str, int] = field(default_factory=dict)
    precision: ResolvedPrecision | None = None  # what the run computed in and held the base in
    gradient_checkpointing: bool = False  # as resolved from the config's "auto" / true / false
    base_quantization: BaseQuantization = "none"  # how the frozen base's linears were held
