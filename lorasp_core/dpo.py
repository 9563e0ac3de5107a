"""Direct Preference Optimization (Rafailov et al. 2023) for `train(objective="dpo")`, as TRL's default.

Loss per pair: -logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), where pi/ref are the summed
log-probabilities of the chosen (c) and rejected (r) response tokens under the policy and the reference.

The reference policy is the model as `train` receives it, before its first update: the base model for a
job from a base model (LoRA-SP's B starts at zero, so the adapters add nothing yet: the same function as
`adapters_disabled(model)`), the parent adapter for a job that continues from a fine-tuned model. Its
log-probs are computed once up front under no_grad (TRL's `precompute_ref_log_probs`), which needs no
second model copy and no per-step reference forward. A checkpoint stores them, so a resumed run uses the
original reference and never the resumed policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from lorasp_core.data import (
    IGNORE_INDEX,
    Example,
    PreferenceExample,
    TokenizedPair,
    collate,
    padded_batches,
    tokenize_preference,
)
from lorasp_core.train_config import DPO_METRICS, TrainConfig
from lorasp_core.training_ops import Batch, forward_logits, to_device

__all__ = ["DPO_METRICS", "dpo_backward", "dpo_loss", "reference_log_probs", "sequence_log_probs"]


def tokenize_pairs(
    data: Sequence[Example], tokenizer: PreTrainedTokenizerBase, config: TrainConfig
) -> list[TokenizedPair]:
    pairs = []
    for index, example in enumerate(data):
        if not isinstance(example, PreferenceExample):
            raise ValueError(f"the dpo objective trains on preference examples; example {index} is not one")
        pairs.append(tokenize_preference(example, tokenizer, max_length=config.max_length))
    if not pairs:
        raise ValueError("no training examples")
    return pairs


def collate_pairs(pairs: Sequence[TokenizedPair], pad_id: int) -> Batch:
    """One padded batch of 2 * len(pairs) rows: the chosen sequences, then the rejected ones (one
    forward for both, as TRL's concatenated_forward)."""
    return collate([pair.chosen for pair in pairs] + [pair.rejected for pair in pairs], pad_id)


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(rows,) summed log-probabilities of each row's labelled tokens (token t+1 predicted at t)."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    token_ids = labels.masked_fill(~mask, 0).unsqueeze(-1)
    per_token = torch.gather(F.log_softmax(logits.float(), dim=-1), 2, token_ids).squeeze(-1)
    return (per_token * mask).sum(dim=-1)


def pair_log_probs(model: nn.Module, batch: Batch, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """(pairs, 2): the chosen and the rejected summed log-probs of a `collate_pairs` batch."""
    summed = sequence_log_probs(forward_logits(model, batch, amp_dtype), batch["labels"])
    return torch.stack(summed.chunk(2), dim=1)


@dataclass(frozen=True)
class DPOLoss:
    losses: torch.Tensor  # (pairs,)
    chosen_rewards: torch.Tensor  # (pairs,) beta * (pi_c - ref_c), detached
    rejected_rewards: torch.Tensor


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> DPOLoss:
    """Sigmoid DPO loss of (pairs, 2) policy and reference log-probs (column 0 chosen, 1 rejected)."""
    policy_margin = policy[:, 0] - policy[:, 1]
    reference_margin = reference[:, 0] - reference[:, 1]
    losses = -F.logsigmoid(beta * (policy_margin - reference_margin))
    rewards = beta * (policy - reference).detach()
    return DPOLoss(losses, rewards[:, 0], rewards[:, 1])


@torch.no_grad()
def reference_log_probs(
    model: nn.Module,
    pairs: Sequence[TokenizedPair],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """(len(pairs), 2) float32 on CPU, in eval mode (no dropout): the reference policy's log-probs."""
    was_training = model.training
    model.eval()
    try:
        rows = [
            pair_log_probs(
                model, to_device(collate_pairs([pairs[i] for i in indices], pad_id), device), amp_dtype
            )
            for indices in padded_batches(len(pairs), batch_size, seed=0, epoch=0, shuffle=False)
        ]
    finally:
        model.train(was_training)
    return torch.cat(rows).float().cpu()


@dataclass(frozen=True)
class DPOStepFigures:
    loss: float
    tokens: int
    metrics: dict[str, float]


def dpo_backward(
    model: nn.Module,
    pairs: Sequence[TokenizedPair],
    reference: torch.Tensor,
    micro_batches: list[list[int]],
    pad_id: int,
    config: TrainConfig,
    amp_dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None = None,
) -> DPOStepFigures:
    """Forward/backward over one step's micro-batches of pair indices: the loss is the mean over all the
    step's pairs, so accumulation gives the gradient of one big batch."""
    step_pairs = sum(len(indices) for indices in micro_batches)
    device = next(model.parameters()).device
    loss_total, tokens = 0.0, 0
    chosen, rejected = [], []
    for indices in micro_batches:
        batch = to_device(collate_pairs([pairs[i] for i in indices], pad_id), device)
        result = dpo_loss(
            pair_log_probs(model, batch, amp_dtype), reference[indices].to(device), config.dpo_beta
        )
        loss = result.losses.sum() / step_pairs
        (scaler.scale(loss) if scaler is not None else loss).backward()  # type: ignore[no-untyped-call]
        loss_total += loss.item()
        tokens += int(batch["attention_mask"].sum())
        chosen.append(result.chosen_rewards)
        rejected.append(result.rejected_rewards)
    chosen_rewards, rejected_rewards = torch.cat(chosen), torch.cat(rejected)
    metrics = {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
    }
    return DPOStepFigures(loss_total, tokens, metrics)
