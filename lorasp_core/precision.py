"""Which precision a run trains in, chosen from the hardware, and the frozen base held in bf16.

`resolve_precision` turns the config's wishes ("auto" included) into a `ResolvedPrecision`: bf16
autocast where the hardware runs it fast (CUDA with bf16; a CPU with AMX or AVX512-BF16, detected from
its flags), fp16 autocast with a `GradScaler` on CUDA without bf16, fp32 otherwise. Adapters always keep
fp32 master weights: autocast casts them per op, the optimizer never sees a low-precision copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

ComputePrecision = Literal["fp32", "bf16", "fp16"]
BaseDtypeName = Literal["float32", "bfloat16"]

# CPU flags (as /proc/cpuinfo names them) of instructions that make bf16 matmuls faster than fp32.
FAST_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
CPUINFO = Path("/proc/cpuinfo")


class PrecisionError(ValueError):
    """A precision the device cannot run, or a base dtype that needs an autocast that was not chosen."""


@dataclass(frozen=True)
class ResolvedPrecision:
    compute: ComputePrecision  # the autocast dtype of the forward pass ("fp32": no autocast)
    base_dtype: BaseDtypeName  # the dtype the frozen base weights are held in

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.compute]

    @property
    def uses_grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range."""
        return self.compute == "fp16"

    @property
    def base_torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.base_dtype == "bfloat16" else torch.float32

    def to_dict(self) -> dict[str, str]:
        return {"precision": self.compute, "base_dtype": self.base_dtype}


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matmul instructions (AMX or AVX512-BF16), not merely AVX512: oneDNN
    emulates bf16 on plain AVX512, slower than fp32. Without /proc/cpuinfo, torch's own cpuinfo decides."""
    flags = cpu_flags()
    if flags:
        return bool(flags & FAST_BF16_CPU_FLAGS)
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _auto_compute(device: torch.device) -> ComputePrecision:
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_fast_bf16():
        return "bf16"
    return "fp32"


def resolve_precision(mixed_precision: str, base_dtype: str, device: torch.device) -> ResolvedPrecision:
    """The precision a run on `device` uses for the config's `mixed_precision` and `base_dtype`.

    A bf16 base needs an autocast (the trainable head and adapters are fp32; without autocast their
    matmuls would meet bf16 activations), so "auto" holds the base in bf16 only under bf16 autocast."""
    compute: ComputePrecision
    if mixed_precision == "auto":
        compute = _auto_compute(device)
    elif mixed_precision == "no":
        compute = "fp32"
    elif mixed_precision == "bf16":
        compute = "bf16"
    elif mixed_precision == "fp16":
        compute = "fp16"
    else:
        raise PrecisionError(f"mixed_precision must be auto, bf16, fp16 or no, got {mixed_precision!r}")
    if base_dtype == "auto":
        base: BaseDtypeName = "bfloat16" if compute == "bf16" else "float32"
    elif base_dtype in ("float32", "bfloat16"):
        base = "bfloat16" if base_dtype == "bfloat16" else "float32"
    else:
        raise PrecisionError(f"base_dtype must be auto, float32 or bfloat16, got {base_dtype!r}")
    if base == "bfloat16" and compute == "fp32":
        raise PrecisionError("base_dtype 'bfloat16' needs mixed_precision 'bf16' or 'fp16' (an autocast)")
    return ResolvedPrecision(compute=compute, base_dtype=base)


@torch.no_grad()
def hold_frozen_base_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast the frozen floating-point parameters (the base weights) to `dtype`, in place; returns how
    many. Trainable parameters (adapter entries, a classification head) and buffers (LoRA-SP's frozen
    entries, rotary tables) keep their dtype, so adapters keep fp32 master weights."""
    cast = 0
    for parameter in model.parameters():
        if not parameter.requires_grad and parameter.is_floating_point() and parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)  # tied weights share one Parameter: cast once
            cast += 1
    return cast


def grad_scaler(precision: ResolvedPrecision, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that scales only under fp16 (disabled, it passes every call straight through)."""
    return torch.amp.GradScaler(device.type, enabled=precision.uses_grad_scaler)
