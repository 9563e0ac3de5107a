"""Logits at the training targets only: the LM head applied where a label is supervised.

A causal LM's head is a `hidden x vocab` matmul at every position, yet a chat example supervises only
its assistant tokens (on SST-2 chat ~2 of ~54). `target_logits` runs the model's backbone for the
hidden states, keeps the positions whose next token is a label, and applies the head there: the same
loss and gradients as the full logits (the head is per position), with a fraction of the head's work.
Architectures whose forward does more than `lm_head(hidden)` (logit soft-capping, scaling) take the
full path; `HEAD_AT_LABELS_MODEL_TYPES` names those known to be plain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lorasp_core.data import IGNORE_INDEX
from lorasp_core.train_config import TaskType

Batch = dict[str, torch.Tensor]

# model_type values whose causal-LM forward is `lm_head(backbone(...).last_hidden_state)`, nothing more.
HEAD_AT_LABELS_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gpt2", "phi3", "olmo", "olmo2", "smollm3", "starcoder2"}
)


@dataclass(frozen=True)
class TargetLogits:
    """Float32 logits `(N, classes)` and their labels `(N,)` (IGNORE_INDEX rows count for nothing)."""

    logits: torch.Tensor
    labels: torch.Tensor

    def loss_sum(self) -> torch.Tensor:
        """Summed cross-entropy, so gradient accumulation weighs every target equally."""
        return F.cross_entropy(self.logits, self.labels, ignore_index=IGNORE_INDEX, reduction="sum")

    @torch.no_grad()
    def correct(self) -> int:
        """Targets whose argmax prediction is the label: the numerator of mean token accuracy."""
        hits = (self.logits.argmax(dim=-1) == self.labels) & (self.labels != IGNORE_INDEX)
        return int(hits.sum())


def head_at_labels_supported(model: nn.Module) -> bool:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    get_head = getattr(model, "get_output_embeddings", None)
    backbone = getattr(model, "base_model", model)
    return (
        model_type in HEAD_AT_LABELS_MODEL_TYPES
        and backbone is not model
        and callable(get_head)
        and isinstance(get_head(), nn.Module)
    )


def target_logits(
    model: nn.Module, batch: Batch, amp_dtype: torch.dtype | None, task: TaskType, head_at_labels: bool
) -> TargetLogits:
    """The logits that the loss and accuracy of `batch` are computed from, flattened to targets."""
    labels = batch["labels"]
    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        if task == "causal-lm" and head_at_labels and head_at_labels_supported(model):
            return _head_at_labels(model, batch)
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits: torch.Tensor = outputs.logits.float()
    if task == "causal-lm":  # predict token t+1 from tokens <= t
        return TargetLogits(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    return TargetLogits(logits, labels)


def _head_at_labels(model: nn.Module, batch: Batch) -> TargetLogits:
    backbone = model.base_model
    head = model.get_output_embeddings()  # type: ignore[operator]
    assert isinstance(backbone, nn.Module) and isinstance(head, nn.Module)  # head_at_labels_supported
    hidden = backbone(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    next_labels = batch["labels"][:, 1:]
    supervised = next_labels != IGNORE_INDEX  # position t predicts token t+1
    logits: torch.Tensor = head(hidden[:, :-1][supervised])
    return TargetLogits(logits.float(), next_labels[supervised])
