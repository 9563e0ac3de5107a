"""Admission before work: estimate a job's peak memory at creation and pick the resource class to run it.

Workers declare what they can hold as resource classes (`LORASP_RESOURCE_CLASSES`) and consume the
Celery queues of theirs (`LORASP_WORKER_QUEUES`, see `lorasp_service.queue.job_queue_name`). A job
goes to the smallest class whose memory holds its estimate; one that no class can hold is refused with
the estimate and the largest capacity, before it waits in a queue and fails an hour later.

The estimate (`lorasp_core.memory_estimate`) depends on the device: a CUDA class trains under bf16
autocast (activations at 2 bytes), a CPU class in the job's precision. The sequence length is the
longest the job can batch: its max_length, or the training file's longest example when shorter.

With `processes` > 1 the estimate is per rank (each holds the whole model and batch_size / processes
examples of every batch). A CUDA class's memory is one GPU's, and each rank has its own GPU; the ranks
of a CPU job share the host's memory, so a CPU class must hold processes times the per-rank estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorasp_core.memory_estimate import GIB, MemoryEstimate, TrainingShape, estimate_training_memory
from lorasp_core.models.skeleton import model_skeleton
from lorasp_core.quantization import QUANTIZATION_DEVICES, runs_on
from lorasp_core.train_config import BaseQuantization
from lorasp_service.jobs.spec import TrainingSpec
from lorasp_service.settings import ResourceClass, Settings


class InsufficientCapacityError(Exception):
    """No configured resource class can hold the job."""

    def __init__(self, estimate: MemoryEstimate, largest: ResourceClass, processes: int = 1) -> None:
        self.estimate = estimate
        self.largest = largest
        where = f"{largest.device}" + (f", {largest.gpu_type}" if largest.gpu_type else "")
        ranks = f" per rank, {processes} ranks" if processes > 1 else ""
        super().__init__(
            f"the job needs an estimated {estimate.describe()}{ranks} of memory, more than the largest "
            f"worker class holds ('{largest.name}': {largest.memory_gib:.1f} GiB, {where}); lower "
            "batch_size or max_length, or add a larger resource class"
        )


class UnsupportedQuantizationError(Exception):
    """No configured resource class runs the job's `base_quantization` (nf4 needs a CUDA class)."""

    option = "base_quantization"

    def __init__(self, quantization: BaseQuantization, classes: list[ResourceClass]) -> None:
        self.quantization = quantization
        devices = " or ".join(sorted(QUANTIZATION_DEVICES[quantization]))
        shown = ", ".join(f"'{c.name}' ({c.device})" for c in classes)
        super().__init__(
            f"base_quantization {quantization!r} needs a {devices} worker class and none is configured "
            f"(classes: {shown})"
        )


@dataclass(frozen=True)
class Admission:
    resource_class: str
    estimate: MemoryEstimate


def job_shape(
    spec: TrainingSpec, longest_example_tokens: int | None, resource_class: ResourceClass
) -> TrainingShape:
    sequence_length = spec.max_length
    if longest_example_tokens is not None and longest_example_tokens > 0:
        sequence_length = min(sequence_length, longest_example_tokens)
    return TrainingShape(
        batch_size=spec.batch_size // spec.processes,  # one rank's share
        sequence_length=sequence_length,
        weight_dtype="float32",  # the worker loads the frozen base in float32 today
        base_quantization=spec.base_quantization,
        compute_dtype="bfloat16" if resource_class.device == "cuda" else "float32",
        device=resource_class.device,
    )


def admit(
    settings: Settings, model: str, spec: TrainingSpec, longest_example_tokens: int | None
) -> Admission:
    """The smallest resource class that holds the job; InsufficientCapacityError if none does,
    UnsupportedQuantizationError if no class runs its base_quantization.

    `model`: the catalog name or the registered model's store directory (what the skeleton reads).
    """
    able = [c for c in settings.classes if runs_on(spec.base_quantization, c.device)]
    if not able:
        raise UnsupportedQuantizationError(spec.base_quantization, settings.classes)
    skeleton = model_skeleton(model, settings.model_cache_dir)
    lora = spec.to_lora_config()
    estimate: MemoryEstimate | None = None
    for resource_class in able:  # smallest first
        estimate = estimate_training_memory(
            skeleton, lora, job_shape(spec, longest_example_tokens, resource_class)
        )
        sharing = spec.processes if resource_class.device == "cpu" else 1  # ranks in one memory
        if estimate.total * sharing <= resource_class.memory_gib * GIB:
            return Admission(resource_class.name, estimate)
    assert estimate is not None  # settings.classes is never empty
    raise InsufficientCapacityError(estimate, able[-1], spec.processes)
