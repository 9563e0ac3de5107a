"""The pieces one training or evaluation step is made of: devices, tokenized data, batches, loss, accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from lorasp_core.data import (
    IGNORE_INDEX,
    Example,
    TokenizedExample,
    label_names_for,
    length_grouped_batches,
    padded_batches,
    tokenize_example,
)
from lorasp_core.precision import resolve_precision
from lorasp_core.train_config import TrainConfig

Batch = dict[str, torch.Tensor]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype `mixed_precision` resolves to on `device` (None: full precision)."""
    return resolve_precision(mixed_precision, "auto", device).autocast_dtype


def resolve_label_names(
    config: TrainConfig, data: Sequence[Example], given: list[str] | None
) -> list[str] | None:
    if config.task != "seq-cls":
        return None
    names = given if given is not None else label_names_for(data)
    if not names:
        raise ValueError("seq-cls training needs labelled classification examples")
    return list(names)


def tokenize_all(
    data: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    config: TrainConfig,
    label_names: list[str] | None,
) -> list[TokenizedExample]:
    label2id = {name: index for index, name in enumerate(label_names)} if label_names else None
    return [tokenize_example(ex, tokenizer, max_length=config.max_length, label2id=label2id) for ex in data]


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if not isinstance(pad_id, int):
        raise ValueError("the tokenizer has neither a pad token nor an EOS token")
    return pad_id


def epoch_batches(lengths: Sequence[int], config: TrainConfig, epoch: int) -> list[list[int]]:
    """Micro-batches (lists of example indices, from the examples' token lengths) of one epoch; their
    number never depends on epoch."""
    if config.batching == "group_by_length":
        return length_grouped_batches(lengths, config.batch_size, seed=config.seed, epoch=epoch)
    return padded_batches(len(lengths), config.batch_size, seed=config.seed, epoch=epoch)


def step_groups(batches: list[list[int]], grad_accum_steps: int) -> list[list[list[int]]]:
    """Micro-batches grouped into optimizer steps (the last step of an epoch may have fewer)."""
    return [batches[start : start + grad_accum_steps] for start in range(0, len(batches), grad_accum_steps)]


def forward_logits(model: nn.Module, batch: Batch, amp_dtype: torch.dtype | None) -> torch.Tensor:
    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits: torch.Tensor = outputs.logits
    return logits.float()


def loss_sum_and_targets(logits: torch.Tensor, labels: torch.Tensor, task: str) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy and number of targets, so accumulation weighs every target equally."""
    count = count_targets(labels, task)
    if task == "causal-lm":  # predict token t+1 from tokens <= t
        logits, labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, count


@torch.no_grad()
def correct_predictions(logits: torch.Tensor, labels: torch.Tensor, task: str) -> int:
    """Targets whose argmax prediction is the label: the numerator of mean token accuracy."""
    if task == "causal-lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    hits = (logits.argmax(dim=-1) == labels) & (labels != IGNORE_INDEX)
    return int(hits.sum())


def count_targets(labels: torch.Tensor, task: str) -> int:
    """Labels that contribute to the loss (for causal-lm the first position predicts nothing)."""
    shifted = labels[:, 1:] if task == "causal-lm" else labels
    return int((shifted != IGNORE_INDEX).sum())


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device) for key, value in batch.items()}


def apply_update(
    trainable: list[nn.Parameter],
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> float:
    """Clip, step and schedule after a step's backward passes; returns the learning rate it used.

    `scaler` is fp16's GradScaler (a no-op when disabled): the backward passes scaled the loss with it."""
    if config.max_grad_norm is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
    learning_rate = float(scheduler.get_last_lr()[0])
    scaler.step(optimizer)  # skipped when fp16 gradients overflowed
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return learning_rate
