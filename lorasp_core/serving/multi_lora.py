"""Layers that serve many adapters at once: every batch row picks its own adapter slot.

A `SlotSelection` is shared by all wrapped modules of one base model; the engine sets it (under the
model's lock) right before a forward. Slot 0 means "no adapter" and is all zeros.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


class SlotSelection:
    """Which adapter slot each batch row uses, pre-digested once per forward for all layers."""

    def __init__(self) -> None:
        self.row_slots: torch.Tensor | None = None
        self.unique_slots: tuple[int, ...] = ()  # nonzero slots in use
        # The slot every row uses when the batch is uniform (the common single-adapter case).
        self.single_slot: int | None = None

    def set(self, row_slots: torch.Tensor | None) -> None:
        if row_slots is None:
            self.row_slots, self.unique_slots, self.single_slot = None, (), None
            return
        self.row_slots = row_slots.to(torch.long)
        distinct = [int(s) for s in torch.unique(self.row_slots).tolist()]
        self.unique_slots = tuple(s for s in distinct if s != 0)
        self.single_slot = distinct[0] if len(distinct) == 1 and distinct[0] != 0 else None


def linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of an nn.Linear or GPT-2 Conv1D; None for anything else."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        weight = module.weight
        return int(weight.shape[0]), int(weight.shape[1])  # Conv1D stores (in, out)
    return None


class MultiAdapterLinear(nn.Module):
    """base_layer(x) + scaling[s] * B[s] A[s] x with a per-row slot s; the base weights are never touched.

    Slot tensors are preallocated for all S slots. Their rank dimension is the largest rank loaded so far
    (grown on demand, zero-padded: exact), so compute stays proportional to the ranks really in use.
    """

    def __init__(self, base_layer: nn.Module, num_slots: int, rank: int, selection: SlotSelection) -> None:
        super().__init__()
        dims = linear_dims(base_layer)
        if dims is None:
            raise TypeError(f"cannot wrap {type(base_layer).__name__}: only nn.Linear and Conv1D")
        self.base_layer = base_layer
        self.in_features, self.out_features = dims
        self.selection = selection
        weight = base_layer.weight
        assert isinstance(weight, torch.Tensor)
        # Same dtype/device as the base weight, so the adapter math runs where the base does (plain
        # tensors: a quantized base weight, a torchao tensor subclass, has no `new_zeros`).
        dtype, device = weight.dtype, weight.device
        self.register_buffer(
            "lora_A_slots", torch.zeros(num_slots, rank, self.in_features, dtype=dtype, device=device)
        )
        self.register_buffer(
            "lora_B_slots", torch.zeros(num_slots, self.out_features, rank, dtype=dtype, device=device)
        )
        self.register_buffer("scaling_slots", torch.zeros(num_slots, dtype=dtype, device=device))
        # Python copies of per-slot rank/scaling: read on every forward without a tensor sync.
        self.slot_ranks: list[int] = [0] * num_slots
        self.slot_scalings: list[float] = [0.0] * num_slots

    lora_A_slots: torch.Tensor
    lora_B_slots: torch.Tensor
    scaling_slots: torch.Tensor

    @property
    def allocated_rank(self) -> int:
        return int(self.lora_A_slots.shape[1])

    def _grow_rank(self, rank: int) -> None:
        extra = rank - self.allocated_rank
        num_slots = self.lora_A_slots.shape[0]
        pad_A = self.lora_A_slots.new_zeros(num_slots, extra, self.in_features)
        pad_B = self.lora_B_slots.new_zeros(num_slots, self.out_features, extra)
        self.lora_A_slots = torch.cat([self.lora_A_slots, pad_A], dim=1)
        self.lora_B_slots = torch.cat([self.lora_B_slots, pad_B], dim=2)

    def set_slot(self, slot: int, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> None:
        if slot == 0:
            raise ValueError("slot 0 is reserved for 'no adapter'")
        rank = int(lora_A.shape[0])
        if rank > self.allocated_rank:
            self._grow_rank(rank)
        self.clear_slot(slot)
        self.lora_A_slots[slot, :rank].copy_(lora_A)
        self.lora_B_slots[slot, :, :rank].copy_(lora_B)
        self.scaling_slots[slot] = scaling
        self.slot_ranks[slot] = rank
        self.slot_scalings[slot] = scaling

    def clear_slot(self, slot: int) -> None:
        self.lora_A_slots[slot].zero_()
        self.lora_B_slots[slot].zero_()
        self.scaling_slots[slot] = 0.0
        self.slot_ranks[slot] = 0
        self.slot_scalings[slot] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.base_layer(x)
        selection = self.selection
        rank = max((self.slot_ranks[s] for s in selection.unique_slots), default=0)
        if rank == 0:  # fast path: no row uses an adapter that touches this module
            return result
        single = selection.single_slot
        if single is not None:
            # One adapter for the whole batch: plain matmuls at its own rank, the same ops as PEFT.
            r = self.slot_ranks[single]
            hidden = nn.functional.linear(x, self.lora_A_slots[single, :r])
            delta = nn.functional.linear(hidden, self.lora_B_slots[single, :, :r])
            return result + delta * self.slot_scalings[single]
        row_slots = selection.row_slots
        assert row_slots is not None
        batch = x.shape[0]
        if row_slots.shape[0] != batch:
            raise ValueError(f"{batch} batch rows but {row_slots.shape[0]} row slots are active")
        lora_A = self.lora_A_slots[row_slots, :rank]  # (B, r, in), gathered per row
        lora_B = self.lora_B_slots[row_slots, :, :rank]  # (B, out, r)
        flat = x.reshape(batch, -1, self.in_features)
        delta = torch.bmm(torch.bmm(flat, lora_A.transpose(1, 2)), lora_B.transpose(1, 2))
        delta = delta * self.scaling_slots[row_slots].view(batch, 1, 1)
        return result + delta.view(result.shape)


class RowDispatchModule(nn.Module):
    """Per-slot copies of a whole module (PEFT's modules_to_save, e.g. a classification head).

    Rows are grouped by slot; each group runs its slot's copy (or the base module). Outputs whose last
    dimension differs (heads with different label counts) are zero-padded to the widest.
    """

    def __init__(self, base_module: nn.Module, selection: SlotSelection) -> None:
        super().__init__()
        self.base_module = base_module
        self.selection = selection
        self.slot_modules: dict[int, nn.Module] = {}

    def make_copy(self, params: dict[str, torch.Tensor]) -> nn.Module:
        """A copy of the base module holding `params` (output dims may differ, e.g. num_labels)."""
        module = copy.deepcopy(self.base_module)
        for name, tensor in params.items():
            owner_path, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_path)
            old = getattr(owner, leaf)
            value = tensor.to(dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                setattr(owner, leaf, nn.Parameter(value, requires_grad=False))
            else:
                setattr(owner, leaf, value)
        return module

    def set_slot(self, slot: int, module: nn.Module) -> None:
        self.slot_modules[slot] = module

    def clear_slot(self, slot: int) -> None:
        self.slot_modules.pop(slot, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        selection = self.selection
        used = [s for s in selection.unique_slots if s in self.slot_modules]
        if not used:
            out: torch.Tensor = self.base_module(x)
            return out
        single = selection.single_slot
        if single is not None:
            out = self.slot_modules[single](x)
            return out
        row_slots = selection.row_slots
        assert row_slots is not None
        pieces: list[tuple[torch.Tensor, torch.Tensor]] = []
        for slot in sorted(set(row_slots.tolist())):
            rows = (row_slots == slot).nonzero().flatten()
            module = self.slot_modules.get(slot, self.base_module)
            pieces.append((rows, module(x[rows])))
        width = max(piece.shape[-1] for _, piece in pieces)
        first = pieces[0][1]
        merged = first.new_zeros((x.shape[0], *first.shape[1:-1], width))
        for rows, piece in pieces:
            merged[rows, ..., : piece.shape[-1]] = piece
        return merged
