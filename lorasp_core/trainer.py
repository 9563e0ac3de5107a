"""The training loop: AdamW over the trainable LoRA-SP entries (+ head), read top to bottom.

Deterministic on CPU for a given seed: batch orders depend only on (seed, epoch), the RNG is
seeded (inside `fork_rng`, so the caller's RNG is untouched) and checkpoints carry everything
needed to continue bit-identically. `train` sets up, then loops over steps; one optimizer step is
`_optimizer_step`, evaluations are `evaluation.Validation`'s, a checkpoint is `_save_checkpoint`'s.
With `processes > 1` every rank runs this same loop on its share of each batch (`distributed.RankGroup`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, get_scheduler

from lorasp_core.adapters import load_adapter, optimizer_state_bytes
from lorasp_core.checkpoint import (
    TrainerState,
    capture_rng_state,
    load_trainer_state,
    restore_rng_state,
    save_checkpoint,
)
from lorasp_core.checkpointing import gradient_checkpointing, resolve_gradient_checkpointing
from lorasp_core.data import Example, TokenizedExample, TokenizedPair, collate, packed_rows
from lorasp_core.distributed import RankGroup
from lorasp_core.dpo import dpo_backward, reference_log_probs, tokenize_pairs
from lorasp_core.evaluation import Validation, evaluate
from lorasp_core.precision import grad_scaler, hold_frozen_base_in, resolve_precision
from lorasp_core.quantization import check_quantization, quantize_frozen_base
from lorasp_core.target_logits import target_logits
from lorasp_core.train_config import ProgressEvent, TrainCallback, TrainConfig, TrainResult
from lorasp_core.training_ops import (
    apply_update,
    count_targets,
    epoch_batches,
    pad_token_id,
    resolve_device,
    resolve_label_names,
    step_groups,
    to_device,
    tokenize_all,
)

__all__ = ["ProgressEvent", "TrainCallback", "TrainConfig", "TrainResult", "evaluate", "train"]


@dataclass
class _Totals:
    """What the run has done so far; checkpointed, so a resumed run continues the same sums."""

    step: int = 0
    trained_tokens: int = 0
    loss_sum: float = 0.0


@dataclass(frozen=True)
class _StepResult:
    loss: float
    token_accuracy: float | None  # None for dpo: its figures are in objective_metrics
    tokens: int
    learning_rate: float
    objective_metrics: dict[str, float] | None = None


def _optimizer_step(
    model: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    group: RankGroup,
    config: TrainConfig,
    amp_dtype: torch.dtype | None,
    trainable: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> _StepResult:
    """Forward/backward over this rank's micro-batches of one step (loss averaged over all the step's
    targets, on every rank), gradients summed over the ranks, then clip, step and schedule. `scaler`
    scales the loss under fp16 only (otherwise it passes through)."""
    local_targets = sum(count_targets(batch["labels"], config.task) for batch in batches)
    step_targets = int(group.sum_values([local_targets])[0])
    step_loss, correct, tokens = 0.0, 0, 0
    for batch in batches:
        at_targets = target_logits(model, batch, amp_dtype, config.task, config.head_at_labels)
        loss = at_targets.loss_sum() / max(step_targets, 1)
        scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        step_loss += loss.item()
        correct += at_targets.correct()
        tokens += int(batch["attention_mask"].sum())
    group.sum_gradients(trainable)
    learning_rate = apply_update(trainable, config, optimizer, scheduler, scaler)
    step_loss, summed_correct, summed_tokens = group.sum_values([step_loss, correct, tokens])
    accuracy = summed_correct / max(step_targets, 1)
    return _StepResult(step_loss, accuracy, int(summed_tokens), learning_rate)


def _training_examples(
    data: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    config: TrainConfig,
    label_names: list[str] | None,
    pad_id: int,
) -> list[TokenizedExample]:
    """Tokenized once; "pack" concatenates causal-LM examples into rows of max_length."""
    examples = tokenize_all(data, tokenizer, config, label_names)
    if config.batching == "pack":
        eos_id = tokenizer.eos_token_id if isinstance(tokenizer.eos_token_id, int) else pad_id
        examples = packed_rows(examples, config.max_length, eos_id)
    if not examples:
        raise ValueError("no training examples")
    return examples


def train(
    config: TrainConfig,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train_data: Sequence[Example],
    eval_data: Sequence[Example] | None = None,
    callbacks: Sequence[TrainCallback] = (),
    label_names: list[str] | None = None,
) -> TrainResult:
    """Train the (already `apply_lorasp`-wrapped) model in place; see docs/interfaces.md.

    With `config.processes > 1` this is one rank of that many (distributed.py): every rank passes the
    same arguments; rank 0 alone evaluates, writes checkpoints and calls `callbacks`."""
    group = RankGroup.for_processes(config.processes, resolve_device(config.device))
    device = group.device
    if not group.is_main:
        callbacks, eval_data = (), None
    precision = resolve_precision(config.mixed_precision, config.base_dtype, device)
    amp_dtype = precision.autocast_dtype
    checkpointing = resolve_gradient_checkpointing(config.gradient_checkpointing, device)
    check_quantization(config.base_quantization, device)  # before any work: nf4 needs CUDA + bitsandbytes
    label_names = resolve_label_names(config, train_data, label_names)
    pad_id = pad_token_id(tokenizer)
    dpo = config.objective == "dpo"
    if dpo and eval_data:
        raise ValueError("validation data is not supported with the dpo objective")
    examples: list[TokenizedExample] = []
    pairs: list[TokenizedPair] = []
    if dpo:
        pairs = tokenize_pairs(train_data, tokenizer, config)
        lengths = [pair.length for pair in pairs]
    else:
        examples = _training_examples(train_data, tokenizer, config, label_names, pad_id)
        lengths = [len(example.input_ids) for example in examples]
    eval_examples = tokenize_all(eval_data, tokenizer, config, label_names) if eval_data else []
    steps_per_epoch = len(step_groups(epoch_batches(lengths, config, 0), config.grad_accum_steps))
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    # optimizer over the entries that really train (frozen LoRA-SP entries are buffers, not here)
    model.to(device)
    hold_frozen_base_in(model, precision.base_torch_dtype)
    # after the cast: the quantized weights dequantize to the dtype the base is held in
    quantize_frozen_base(model, config.base_quantization)
    scaler = grad_scaler(precision, device)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    validation = Validation(model, eval_examples, pad_id, config, callbacks)
    reference: torch.Tensor | None = None  # dpo: the reference policy's log-probs of every pair

    def checkpoint(totals: _Totals, epoch: int, next_group: int) -> Path:
        return _save_checkpoint(
            model,
            tokenizer,
            config,
            callbacks,
            label_names,
            totals,
            total_steps,
            epoch,
            next_group,
            optimizer,
            scheduler,
            reference,
            scaler,
        )

    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), gradient_checkpointing(model, checkpointing):
        torch.manual_seed(config.seed)
        totals, start_epoch, start_group = _Totals(), 0, 0
        if config.resume_from is not None:
            load_adapter(model, config.resume_from)  # weights + head; masks re-derived and checked
            resumed = load_trainer_state(config.resume_from)
            optimizer.load_state_dict(resumed.optimizer)
            scheduler.load_state_dict(resumed.scheduler)
            if resumed.grad_scaler is not None:
                scaler.load_state_dict(resumed.grad_scaler)
            restore_rng_state(resumed.rng)
            totals = _Totals(resumed.step, resumed.trained_tokens, resumed.loss_sum)
            start_epoch, start_group = resumed.epoch, resumed.batch_in_epoch
            reference = resumed.reference_log_probs
            if dpo and (reference is None or len(reference) != len(pairs)):
                raise ValueError(f"{config.resume_from} holds no reference log-probs for these pairs")
        elif dpo:  # the model before its first update is the reference policy (see dpo.py)
            reference = reference_log_probs(model, pairs, pad_id, config.batch_size, device, amp_dtype)
        group.broadcast_state(model)

        for callback in callbacks:
            callback.on_train_begin(total_steps)
        was_training = model.training
        model.train()
        start_time, start_step, start_tokens = time.perf_counter(), totals.step, totals.trained_tokens
        last_checkpoint: Path | None = None
        cancelled = False
        epoch, next_group = start_epoch, start_group

        for epoch in range(start_epoch, config.epochs):
            groups = step_groups(epoch_batches(lengths, config, epoch), config.grad_accum_steps)
            first_group = start_group if epoch == start_epoch else 0
            for group_index in range(first_group, len(groups)):
                next_group = group_index
                if totals.step >= total_steps:
                    break
                cancelled = group.any(any(callback.should_stop() for callback in callbacks))
                if cancelled:
                    break
                if reference is not None:
                    figures = dpo_backward(
                        model, pairs, reference, groups[group_index], pad_id, config, amp_dtype, scaler
                    )
                    rate = apply_update(trainable, config, optimizer, scheduler, scaler)
                    done = _StepResult(figures.loss, None, figures.tokens, rate, figures.metrics)
                else:
                    shards = [group.shard(indices) for indices in groups[group_index]]
                    batches = [
                        to_device(collate([examples[i] for i in shard], pad_id), device)
                        for shard in shards
                        if shard
                    ]
                    done = _optimizer_step(
                        model, batches, group, config, amp_dtype, trainable, optimizer, scheduler, scaler
                    )
                totals.step += 1
                totals.loss_sum += done.loss
                totals.trained_tokens += done.tokens
                next_group = group_index + 1
                step = totals.step

                sample, full = validation.after_step(
                    step, epoch, epoch_done=next_group == len(groups), final=step >= total_steps
                )
                elapsed = time.perf_counter() - start_time
                event = ProgressEvent(
                    step=step,
                    total_steps=total_steps,
                    epoch=epoch + next_group / len(groups),
                    train_loss=done.loss,
                    learning_rate=done.learning_rate,
                    tokens_per_second=(totals.trained_tokens - start_tokens) / max(elapsed, 1e-9),
                    elapsed_seconds=elapsed,
                    eta_seconds=elapsed / (step - start_step) * (total_steps - step),
                    trained_tokens=totals.trained_tokens,
                    train_mean_token_accuracy=done.token_accuracy,
                    eval_metrics=sample,
                    full_eval_metrics=full,
                    objective_metrics=done.objective_metrics,
                )
                for callback in callbacks:
                    callback.on_progress(event)
                every = config.checkpoint_every_steps
                if group.is_main and every and step % every == 0:
                    last_checkpoint = checkpoint(totals, epoch, next_group)
            if not cancelled and next_group == len(groups):  # the epoch ran to its end
                for callback in callbacks:
                    callback.on_epoch_end(totals.step, epoch, model)
            if totals.step >= total_steps or cancelled:
                break

        if (
            cancelled
            and group.is_main
            and config.checkpoint_dir is not None
            and (last_checkpoint is None or last_checkpoint.name != f"step-{totals.step}")
        ):
            last_checkpoint = checkpoint(totals, epoch, next_group)
        eval_metrics = None if cancelled else validation.final(totals.step)
        model.train(was_training)

    step = totals.step
    return TrainResult(
        steps=step,
        total_steps=total_steps,
        trained_tokens=totals.trained_tokens,
        train_loss=totals.loss_sum / step if step else None,
        eval_metrics=eval_metrics,
        cancelled=cancelled,
        last_checkpoint=last_checkpoint,
        optimizer_state_bytes=optimizer_state_bytes(optimizer, model),
        precision=precision,
        gradient_checkpointing=checkpointing,
        base_quantization=config.base_quantization,
    )


def _save_checkpoint(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    config: TrainConfig,
    callbacks: Sequence[TrainCallback],
    label_names: list[str] | None,
    totals: _Totals,
    total_steps: int,
    epoch: int,
    next_group: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    reference: torch.Tensor | None,
    scaler: torch.amp.GradScaler,
) -> Path:
    assert config.checkpoint_dir is not None
    state = TrainerState(
        step=totals.step,
        epoch=epoch,
        batch_in_epoch=next_group,
        trained_tokens=totals.trained_tokens,
        loss_sum=totals.loss_sum,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        rng=capture_rng_state(),
        reference_log_probs=reference,
        grad_scaler=scaler.state_dict() if scaler.is_enabled() else None,
    )
    summary = {
        "step": totals.step,
        "total_steps": total_steps,
        "trained_tokens": totals.trained_tokens,
        "train_loss": totals.loss_sum / max(totals.step, 1),
    }
    path = save_checkpoint(
        model,
        config.checkpoint_dir,
        state,
        task_type=config.task,
        label_names=label_names,
        base_model_name_or_path=_base_model_name(model),
        training_summary=summary,
        chat_template=getattr(tokenizer, "chat_template", None),
    )
    for callback in callbacks:
        callback.on_checkpoint(totals.step, path)
    return path


def _base_model_name(model: nn.Module) -> str:
    name = getattr(getattr(model, "config", None), "name_or_path", None)
    return name if isinstance(name, str) and name else "unknown"
