"""Precision: bf16 detected from the CPU's flags, "auto" resolved per device, a bf16 frozen base under
fp32 adapters (training under every CPU precision: tests/core/test_train.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lorasp_core import precision
from lorasp_core.layers import LoraSPLinear
from lorasp_core.precision import (
    PrecisionError,
    ResolvedPrecision,
    cpu_has_fast_bf16,
    hold_frozen_base_in,
    resolve_precision,
)
from lorasp_core.trainer import TrainConfig

CPU = torch.device("cpu")


def cpuinfo_with(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\n")
    return path


@pytest.mark.parametrize(
    ("flags", "fast"),
    [
        ("avx2 avx512f avx512bw avx512_bf16", True),
        ("avx2 amx_tile amx_bf16", True),
        ("avx2 avx512f avx512bw avx512vl", False),  # AVX512 alone: oneDNN emulates bf16, slower than fp32
        ("avx2", False),
    ],
)
def test_fast_bf16_is_read_from_the_cpu_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str, fast: bool
) -> None:
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo_with(tmp_path, flags))
    assert cpu_has_fast_bf16() is fast
    expected = ResolvedPrecision("bf16", "bfloat16") if fast else ResolvedPrecision("fp32", "float32")
    assert resolve_precision("auto", "auto", CPU) == expected


def test_without_cpuinfo_torchs_own_check_decides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "absent")
    assert precision.cpu_flags() == frozenset()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_has_fast_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not cpu_has_fast_bf16()


def test_auto_on_cuda_is_bf16_or_fp16_with_a_grad_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", "auto", cuda) == ResolvedPrecision("bf16", "bfloat16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    older_gpu = resolve_precision("auto", "auto", cuda)
    assert older_gpu == ResolvedPrecision("fp16", "float32")
    assert older_gpu.uses_grad_scaler and older_gpu.autocast_dtype == torch.float16


def test_explicit_choices_and_the_base_dtype_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("bf16", "auto", CPU) == ResolvedPrecision("bf16", "bfloat16")
    assert resolve_precision("bf16", "float32", CPU) == ResolvedPrecision("bf16", "float32")
    assert resolve_precision("fp16", "bfloat16", CPU) == ResolvedPrecision("fp16", "bfloat16")
    assert resolve_precision("no", "auto", CPU).autocast_dtype is None
    with pytest.raises(PrecisionError, match="needs mixed_precision"):
        resolve_precision("no", "bfloat16", CPU)
    with pytest.raises(PrecisionError, match="mixed_precision"):
        resolve_precision("int8", "auto", CPU)
    with pytest.raises(ValueError, match="base_dtype"):
        TrainConfig(task="causal-lm", base_dtype="float16")  # type: ignore[arg-type]


def test_a_bf16_base_layer_with_fp32_adapter_entries_matches_fp32() -> None:
    torch.manual_seed(0)
    reference = LoraSPLinear(nn.Linear(64, 48), name="proj", r=8, alpha=16)
    with torch.no_grad():
        reference.lora_B_trainable.normal_()  # B starts at zero: give the low-rank path some weight
    low = LoraSPLinear(nn.Linear(64, 48), name="proj", r=8, alpha=16)
    low.load_state_dict(reference.state_dict())
    low.base_layer.requires_grad_(False)
    assert hold_frozen_base_in(low, torch.bfloat16) == 2  # weight and bias
    x = torch.randn(4, 64)
    expected = reference(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = low(x)
    got.float().sum().backward()
    assert low.base_layer.weight.dtype == torch.bfloat16 and low.lora_A_frozen.dtype == torch.float32
    assert low.lora_A_trainable.dtype == low.lora_A_trainable.grad.dtype == torch.float32  # type: ignore[union-attr]
    torch.testing.assert_close(got.float(), expected, rtol=0.03, atol=0.1)
    # Without autocast the low-rank path runs in the adapter's fp32 and joins the bf16 base's output.
    assert low(x.bfloat16()).dtype == torch.bfloat16
