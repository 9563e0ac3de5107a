"""Evaluation: loss and mean token accuracy on validation data, and when the training loop runs it.

During training two evaluations run, as OpenAI reports them: every `eval_every_steps` steps on a fixed
sample of the validation set (`eval_sample_size` examples, chosen once from the seed) and on the whole
set at the end of each of the last `full_eval_epochs` epochs and at the final step; the sample one also
runs at those steps so every checkpoint has both. Evaluations consume no random numbers (dropout is
off, the sample comes from its own generator), so a resumed run stays bit-identical.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from lorasp_core.data import Example, TokenizedExample, collate, padded_batches
from lorasp_core.target_logits import target_logits
from lorasp_core.train_config import EvalScope, TrainCallback, TrainConfig
from lorasp_core.training_ops import (
    autocast_dtype,
    count_targets,
    pad_token_id,
    resolve_label_names,
    to_device,
    tokenize_all,
)

Metrics = dict[str, float]


def evaluate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: Sequence[Example],
    config: TrainConfig,
    label_names: list[str] | None = None,
) -> Metrics:
    """Mean loss per target, mean token accuracy (+ accuracy for seq-cls, perplexity for causal-lm) on
    `data`; the model's train/eval mode is kept."""
    label_names = resolve_label_names(config, data, label_names)
    examples = tokenize_all(data, tokenizer, config, label_names)
    return evaluate_tokenized(model, examples, pad_token_id(tokenizer), config)


@torch.no_grad()
def evaluate_tokenized(
    model: nn.Module, examples: Sequence[TokenizedExample], pad_id: int, config: TrainConfig
) -> Metrics:
    """`evaluate` on already tokenized examples (train tokenizes its validation data once)."""
    device = next(model.parameters()).device
    amp_dtype = autocast_dtype(config.mixed_precision, device)
    was_training = model.training
    model.eval()
    try:
        loss_total, targets, correct = 0.0, 0, 0
        for indices in padded_batches(len(examples), config.batch_size, seed=0, epoch=0, shuffle=False):
            batch = to_device(collate([examples[i] for i in indices], pad_id), device)
            at_targets = target_logits(model, batch, amp_dtype, config.task, config.head_at_labels)
            loss_total += float(at_targets.loss_sum())
            targets += count_targets(batch["labels"], config.task)
            correct += at_targets.correct()
    finally:
        model.train(was_training)
    metrics = {"loss": loss_total / max(targets, 1), "mean_token_accuracy": correct / max(targets, 1)}
    if config.task == "seq-cls":  # one target per example: token accuracy is label accuracy
        metrics["accuracy"] = metrics["mean_token_accuracy"]
    else:
        metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
    return metrics


def validation_sample(examples: Sequence[TokenizedExample], size: int, seed: int) -> list[TokenizedExample]:
    """The fixed sample the periodic validation runs on: the same examples at every step (and resume)."""
    if len(examples) <= size:
        return list(examples)
    chosen = sorted(random.Random(seed).sample(range(len(examples)), size))
    return [examples[index] for index in chosen]


@dataclass
class Validation:
    """Runs the evaluations due after a step and tells the callbacks; empty without validation data."""

    model: nn.Module
    examples: list[TokenizedExample]
    pad_id: int
    config: TrainConfig
    callbacks: Sequence[TrainCallback]
    last_full: Metrics | None = None
    last_full_step: int = -1

    def __post_init__(self) -> None:
        self.sample = validation_sample(self.examples, self.config.eval_sample_size, self.config.seed)

    def full_due(self, epoch: int, epoch_done: bool, final: bool) -> bool:
        last_epochs = self.config.full_eval_epochs
        in_window = last_epochs is None or epoch >= self.config.epochs - last_epochs
        return bool(self.examples) and (final or (epoch_done and in_window))

    def after_step(
        self, step: int, epoch: int, epoch_done: bool, final: bool
    ) -> tuple[Metrics | None, Metrics | None]:
        """(sample metrics, full metrics) of this step, each None where that evaluation was not due."""
        if not self.examples:
            return None, None
        every = self.config.eval_every_steps
        full_due = self.full_due(epoch, epoch_done, final)
        sample = None
        if full_due or (every is not None and step % every == 0):
            sample = self._run(step, self.sample, "sample")
        full = self._run(step, self.examples, "full") if full_due else None
        if full is not None:
            self.last_full, self.last_full_step = full, step
        return sample, full

    def final(self, step: int) -> Metrics | None:
        """The full evaluation of the trained model (run now if the last step did not run it)."""
        if self.examples and self.last_full_step != step:
            self.last_full, self.last_full_step = self._run(step, self.examples, "full"), step
        return self.last_full

    def _run(self, step: int, examples: Sequence[TokenizedExample], scope: EvalScope) -> Metrics:
        metrics = evaluate_tokenized(self.model, examples, self.pad_id, self.config)
        for callback in self.callbacks:
            callback.on_evaluate(step, metrics, scope)
        return metrics
