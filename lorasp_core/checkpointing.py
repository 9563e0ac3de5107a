"""Gradient checkpointing: recompute each decoder layer's activations in backward instead of keeping them.

transformers' own switch (`activation_checkpointing_enable`, v5's name for
`gradient_checkpointing_enable`), non-reentrant: `torch.utils.checkpoint` with `use_reentrant=False` tracks
gradients through a layer whatever its inputs require, so a frozen LoRA-SP base needs no
`enable_input_require_grads` hook (the reentrant variant would drop the adapters' gradients).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lorasp_core.train_config import GradientCheckpointing


def resolve_gradient_checkpointing(setting: GradientCheckpointing, device: torch.device) -> bool:
    """`True`/`False` as given; "auto" is off until an admission estimate can say memory is short
    (recomputation costs ~a third more compute, so it is never worth it while memory suffices)."""
    if setting == "auto":
        return False
    return bool(setting)


@contextmanager
def gradient_checkpointing(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Checkpointing on for the block (when `enabled`), the model's previous setting restored after."""
    if not enabled:
        yield
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
    was_enabled = bool(getattr(model, "is_activation_checkpointing", False))
    model.activation_checkpointing_enable(  # type: ignore[operator]
        activation_checkpointing_kwargs={"use_reentrant": False}
    )
    try:
        yield
    finally:
        if not was_enabled:
            model.activation_checkpointing_disable()  # type: ignore[operator]
