"""`LoraSPLinear`: a LoRA layer whose A and B have a seeded random subset of entries frozen.

Only the trainable entries are `nn.Parameter`s (1-D), so the optimizer never sees (or decays)
the frozen ones and its state is `(1 - freeze_ratio)` of plain LoRA's. The dense matrices are
reassembled on every forward with `index_copy`, which is differentiable wrt the trainable part.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from its parts that is the same in every process (unlike `hash()`)."""
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def frozen_entry_indices(numel: int, freeze_ratio: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(trainable, frozen) flat indices, sorted; exactly round(freeze_ratio * numel) are frozen."""
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(numel, generator=generator)
    frozen_count = round(freeze_ratio * numel)
    frozen = permutation[:frozen_count].sort().values
    trainable = permutation[frozen_count:].sort().values
    return trainable, frozen


class LoraSPLinear(nn.Module):
    """`base_layer(x) + scaling * B A dropout(x)` with part of A and B frozen."""

    lora_A_trainable_index: torch.Tensor
    lora_A_frozen_index: torch.Tensor
    lora_A_frozen: torch.Tensor
    lora_B_trainable_index: torch.Tensor
    lora_B_frozen_index: torch.Tensor
    lora_B_frozen: torch.Tensor

    def __init__(
        self,
        base_layer: nn.Linear | Conv1D,
        *,
        name: str,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        freeze_ratio: float = 0.5,
        mask_seed: int = 0,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(base_layer, Conv1D):
            # GPT-2's Conv1D stores its weight transposed: (in, out).
            self.in_features, self.out_features = base_layer.weight.shape
            self.fan_in_fan_out = True
        elif isinstance(base_layer, nn.Linear):
            self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
            self.fan_in_fan_out = False
        else:
            raise TypeError(f"LoraSPLinear wraps nn.Linear or Conv1D, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.name = name
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        self.freeze_ratio = freeze_ratio
        self.merged = False
        self.disabled = False  # True: the base layer alone (see wrapping.adapters_disabled)
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        device = base_layer.weight.device
        # Same init as PEFT: A Kaiming-uniform (a=sqrt(5)), B zeros; seeded per module.
        dense_a = torch.empty(r, self.in_features)
        init_generator = torch.Generator().manual_seed(stable_seed("init", init_seed, name))
        nn.init.kaiming_uniform_(dense_a, a=math.sqrt(5), generator=init_generator)
        dense_b = torch.zeros(self.out_features, r)
        for matrix, dense in (("A", dense_a), ("B", dense_b)):
            trainable, frozen = frozen_entry_indices(
                dense.numel(), freeze_ratio, stable_seed("mask", mask_seed, name, matrix)
            )
            flat = dense.flatten()
            self.register_buffer(f"lora_{matrix}_trainable_index", trainable.to(device))
            self.register_buffer(f"lora_{matrix}_frozen_index", frozen.to(device))
            self.register_buffer(f"lora_{matrix}_frozen", flat[frozen].to(device))
            setattr(self, f"lora_{matrix}_trainable", nn.Parameter(flat[trainable].to(device)))

    # -- dense views -----------------------------------------------------------------------
    def _dense(self, matrix: str, shape: tuple[int, int]) -> torch.Tensor:
        trainable: torch.Tensor = getattr(self, f"lora_{matrix}_trainable")
        frozen: torch.Tensor = getattr(self, f"lora_{matrix}_frozen")
        flat = torch.empty(shape[0] * shape[1], dtype=trainable.dtype, device=trainable.device)
        flat = flat.index_copy(0, getattr(self, f"lora_{matrix}_frozen_index"), frozen.to(trainable.dtype))
        flat = flat.index_copy(0, getattr(self, f"lora_{matrix}_trainable_index"), trainable)
        return flat.view(shape)

    @property
    def lora_A(self) -> torch.Tensor:
        """Dense A, shape (r, in_features)."""
        return self._dense("A", (self.r, self.in_features))

    @property
    def lora_B(self) -> torch.Tensor:
        """Dense B, shape (out_features, r)."""
        return self._dense("B", (self.out_features, self.r))

    @torch.no_grad()
    def load_dense(self, lora_a: torch.Tensor, lora_b: torch.Tensor) -> None:
        """Set A and B from dense matrices (e.g. a saved adapter); frozen entries are overwritten too."""
        for matrix, dense, shape in (
            ("A", lora_a, (self.r, self.in_features)),
            ("B", lora_b, (self.out_features, self.r)),
        ):
            if tuple(dense.shape) != shape:
                raise ValueError(
                    f"{self.name}: lora_{matrix} has shape {tuple(dense.shape)}, expected {shape}"
                )
            flat = dense.flatten()
            trainable: torch.Tensor = getattr(self, f"lora_{matrix}_trainable")
            frozen: torch.Tensor = getattr(self, f"lora_{matrix}_frozen")
            trainable.copy_(flat[getattr(self, f"lora_{matrix}_trainable_index").to(flat.device)])
            frozen.copy_(flat[getattr(self, f"lora_{matrix}_frozen_index").to(flat.device)])

    # -- merge -----------------------------------------------------------------------------
    def get_delta_weight(self) -> torch.Tensor:
        """scaling * B A in the layout and dtype of the base weight."""
        delta = (self.lora_B @ self.lora_A) * self.scaling
        if self.fan_in_fan_out:
            delta = delta.T
        return delta.to(self.base_layer.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        merged_weight = self.base_layer.weight.data + self.get_delta_weight()
        if not torch.isfinite(merged_weight).all():
            raise ValueError(f"{self.name}: merged weight contains NaN/inf; the adapter is broken")
        self.base_layer.weight.data.copy_(merged_weight)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base_layer.weight.data.sub_(self.get_delta_weight())
        self.merged = False

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.base_layer(x)
        if self.merged or self.disabled:
            return result
        lora_a, lora_b = self.lora_A, self.lora_B
        # Outside autocast, compute the low-rank path in the adapter's dtype (as PEFT does).
        lora_input = self.lora_dropout(x)
        if not torch.is_autocast_enabled(x.device.type):
            lora_input = lora_input.to(lora_a.dtype)
        update = F.linear(F.linear(lora_input, lora_a), lora_b) * self.scaling
        return result + update.to(result.dtype)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, in={self.in_features}, out={self.out_features}, r={self.r}, "
            f"scaling={self.scaling:g}, freeze_ratio={self.freeze_ratio:g}"
        )
