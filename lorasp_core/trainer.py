"""The training loop: AdamW over the trainable LoRA-SP entries (+ head), read top to bottom.

Deterministic on CPU for a given seed: batch orders depend only on (seed, epoch), the RNG is
seeded (inside `fork_rng`, so the caller's RNG is untouched) and checkpoints carry everything
needed to continue bit-identically.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
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
from lorasp_core.data import (
    IGNORE_INDEX,
    Example,
    TokenizedExample,
    collate,
    label_names_for,
    length_grouped_batches,
    packed_rows,
    padded_batches,
    tokenize_example,
)
from lorasp_core.train_config import ProgressEvent, TrainCallback, TrainConfig, TrainResult

__all__ = ["ProgressEvent", "TrainCallback", "TrainConfig", "TrainResult", "evaluate", "train"]

Batch = dict[str, torch.Tensor]


# -- setup helpers ---------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast dtype, or None for full precision ("auto": bf16 on CUDA only)."""
    if mixed_precision == "bf16":
        return torch.bfloat16
    if mixed_precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def resolve_label_names(
    config: TrainConfig, data: Sequence[Example], given: list[str] | None
) -> list[str] | None:
    if config.task != "seq-cls":
        return None
    names = given if given is not None else label_names_for(data)
    if not names:
        raise ValueError("seq-cls training needs labelled classification examples")
    return list(names)


def tokenize_all(data: Sequence[Example], tokenizer: PreTrainedTokenizerBase, config: TrainConfig,
                 label_names: list[str] | None) -> list[TokenizedExample]:
    label2id = {name: index for index, name in enumerate(label_names)} if label_names else None
    return [tokenize_example(ex, tokenizer, max_length=config.max_length, label2id=label2id) for ex in data]


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if not isinstance(pad_id, int):
        raise ValueError("the tokenizer has neither a pad token nor an EOS token")
    return pad_id


def epoch_batches(examples: Sequence[TokenizedExample], config: TrainConfig, epoch: int) -> list[list[int]]:
    """Micro-batches (lists of example indices) of one epoch; their number never depends on epoch."""
    if config.batching == "group_by_length":
        lengths = [len(example.input_ids) for example in examples]
        return length_grouped_batches(lengths, config.batch_size, seed=config.seed, epoch=epoch)
    return padded_batches(len(examples), config.batch_size, seed=config.seed, epoch=epoch)


def step_groups(batches: list[list[int]], grad_accum_steps: int) -> list[list[list[int]]]:
    """Micro-batches grouped into optimizer steps (the last step of an epoch may have fewer)."""
    return [batches[start:start + grad_accum_steps] for start in range(0, len(batches), grad_accum_steps)]


def forward_logits(model: nn.Module, batch: Batch, amp_dtype: torch.dtype | None) -> torch.Tensor:
    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits: torch.Tensor = outputs.logits
    return logits.float()


def loss_sum_and_targets(logits: torch.Tensor, labels: torch.Tensor, task: str) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy and number of targets, so accumulation weighs every target equally."""
    count = _count_targets(labels, task)
    if task == "causal-lm":  # predict token t+1 from tokens <= t
        logits, labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, count


def _count_targets(labels: torch.Tensor, task: str) -> int:
    """Labels that contribute to the loss (for causal-lm the first position predicts nothing)."""
    shifted = labels[:, 1:] if task == "causal-lm" else labels
    return int((shifted != IGNORE_INDEX).sum())


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device) for key, value in batch.items()}


# -- evaluation ------------------------------------------------------------------------------
def evaluate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: Sequence[Example],
             config: TrainConfig, label_names: list[str] | None = None) -> dict[str, float]:
    """Mean loss per target (+ accuracy for seq-cls) on `data`; the model's train/eval mode is kept."""
    label_names = resolve_label_names(config, data, label_names)
    examples = tokenize_all(data, tokenizer, config, label_names)
    return _evaluate_tokenized(model, examples, pad_token_id(tokenizer), config)


@torch.no_grad()
def _evaluate_tokenized(model: nn.Module, examples: Sequence[TokenizedExample], pad_id: int,
                        config: TrainConfig) -> dict[str, float]:
    """`evaluate` on already tokenized examples (train tokenizes its eval data once)."""
    device = next(model.parameters()).device
    amp_dtype = autocast_dtype(config.mixed_precision, device)
    was_training = model.training
    model.eval()
    try:
        loss_total, targets, correct = 0.0, 0, 0
        for indices in padded_batches(len(examples), config.batch_size, seed=0, epoch=0, shuffle=False):
            batch = to_device(collate([examples[i] for i in indices], pad_id), device)
            logits = forward_logits(model, batch, amp_dtype)
            loss, count = loss_sum_and_targets(logits, batch["labels"], config.task)
            loss_total, targets = loss_total + float(loss), targets + count
            if config.task == "seq-cls":
                correct += int((logits.argmax(dim=-1) == batch["labels"]).sum())
    finally:
        model.train(was_training)
    metrics = {"loss": loss_total / max(targets, 1)}
    if config.task == "seq-cls":
        metrics["accuracy"] = correct / max(len(examples), 1)
    else:
        metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
    return metrics


# -- training --------------------------------------------------------------------------------
def train(
    config: TrainConfig,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train_data: Sequence[Example],
    eval_data: Sequence[Example] | None = None,
    callbacks: Sequence[TrainCallback] = (),
    label_names: list[str] | None = None,
) -> TrainResult:
    """Train the (already `apply_lorasp`-wrapped) model in place; see docs/interfaces.md."""
    device = resolve_device(config.device)
    amp_dtype = autocast_dtype(config.mixed_precision, device)
    label_names = resolve_label_names(config, train_data, label_names)
    pad_id = pad_token_id(tokenizer)

    # data: tokenized once; "pack" concatenates causal-LM examples into rows of max_length
    examples = tokenize_all(train_data, tokenizer, config, label_names)
    if config.batching == "pack":
        eos_id = tokenizer.eos_token_id if isinstance(tokenizer.eos_token_id, int) else pad_id
        examples = packed_rows(examples, config.max_length, eos_id)
    if not examples:
        raise ValueError("no training examples")
    eval_examples = tokenize_all(eval_data, tokenizer, config, label_names) if eval_data else []
    steps_per_epoch = len(step_groups(epoch_batches(examples, config, 0), config.grad_accum_steps))
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    # optimizer over the entries that really train (frozen LoRA-SP entries are buffers, not here)
    model.to(device)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.lr_scheduler, optimizer,
                              num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)

    def checkpoint(state_step: int, epoch: int, next_group: int) -> Path:
        assert config.checkpoint_dir is not None
        state = TrainerState(step=state_step, epoch=epoch, batch_in_epoch=next_group,
                             trained_tokens=trained_tokens, loss_sum=loss_sum,
                             optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                             rng=capture_rng_state())
        summary = {"step": state_step, "total_steps": total_steps, "trained_tokens": trained_tokens,
                   "train_loss": loss_sum / max(state_step, 1)}
        path = save_checkpoint(
            model, config.checkpoint_dir, state, task_type=config.task, label_names=label_names,
            base_model_name_or_path=_base_model_name(model), training_summary=summary,
            chat_template=getattr(tokenizer, "chat_template", None),
        )
        for callback in callbacks:
            callback.on_checkpoint(state_step, path)
        return path

    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(config.seed)
        step, start_epoch, start_group, trained_tokens, loss_sum = 0, 0, 0, 0, 0.0
        if config.resume_from is not None:
            load_adapter(model, config.resume_from)  # weights + head; masks re-derived and checked
            resumed = load_trainer_state(config.resume_from)
            optimizer.load_state_dict(resumed.optimizer)
            scheduler.load_state_dict(resumed.scheduler)
            restore_rng_state(resumed.rng)
            step, start_epoch, start_group = resumed.step, resumed.epoch, resumed.batch_in_epoch
            trained_tokens, loss_sum = resumed.trained_tokens, resumed.loss_sum

        for callback in callbacks:
            callback.on_train_begin(total_steps)
        was_training = model.training
        model.train()
        start_time, start_step, start_tokens = time.perf_counter(), step, trained_tokens
        last_checkpoint: Path | None = None
        eval_metrics: dict[str, float] | None = None
        evaluated_at_step = -1
        cancelled = False
        epoch, next_group = start_epoch, start_group

        for epoch in range(start_epoch, config.epochs):
            groups = step_groups(epoch_batches(examples, config, epoch), config.grad_accum_steps)
            first_group = start_group if epoch == start_epoch else 0
            for group_index in range(first_group, len(groups)):
                next_group = group_index
                if step >= total_steps:
                    break
                cancelled = any(callback.should_stop() for callback in callbacks)
                if cancelled:
                    break

                # forward/backward over the micro-batches of this step, loss averaged over all targets
                batches = [to_device(collate([examples[i] for i in indices], pad_id), device)
                           for indices in groups[group_index]]
                step_targets = sum(_count_targets(batch["labels"], config.task) for batch in batches)
                step_loss = 0.0
                for batch in batches:
                    logits = forward_logits(model, batch, amp_dtype)
                    loss, _ = loss_sum_and_targets(logits, batch["labels"], config.task)
                    loss = loss / max(step_targets, 1)
                    loss.backward()  # type: ignore[no-untyped-call]
                    step_loss += loss.item()
                    trained_tokens += int(batch["attention_mask"].sum())
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                learning_rate = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                next_group = group_index + 1
                loss_sum += step_loss

                # evaluation, progress, checkpoint
                step_eval: dict[str, float] | None = None
                if eval_data and config.eval_every_steps and step % config.eval_every_steps == 0:
                    step_eval = eval_metrics = _evaluate_tokenized(model, eval_examples, pad_id, config)
                    evaluated_at_step = step
                    for callback in callbacks:
                        callback.on_evaluate(step, step_eval)
                elapsed = time.perf_counter() - start_time
                steps_done = step - start_step
                event = ProgressEvent(
                    step=step, total_steps=total_steps, epoch=epoch + next_group / len(groups),
                    train_loss=step_loss, learning_rate=learning_rate,
                    tokens_per_second=(trained_tokens - start_tokens) / max(elapsed, 1e-9),
                    elapsed_seconds=elapsed, eta_seconds=elapsed / steps_done * (total_steps - step),
                    trained_tokens=trained_tokens, eval_metrics=step_eval,
                )
                for callback in callbacks:
                    callback.on_progress(event)
                if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
                    last_checkpoint = checkpoint(step, epoch, next_group)
            if not cancelled and next_group == len(groups):  # the epoch ran to its end
                for callback in callbacks:
                    callback.on_epoch_end(step, epoch, model)
            if step >= total_steps or cancelled:
                break

        if cancelled and config.checkpoint_dir is not None and (
            last_checkpoint is None or last_checkpoint.name != f"step-{step}"
        ):
            last_checkpoint = checkpoint(step, epoch, next_group)
        if eval_data and not cancelled and evaluated_at_step != step:
            eval_metrics = _evaluate_tokenized(model, eval_examples, pad_id, config)
            for callback in callbacks:
                callback.on_evaluate(step, eval_metrics)
        model.train(was_training)

    return TrainResult(steps=step, total_steps=total_steps, trained_tokens=trained_tokens,
                       train_loss=loss_sum / step if step else None, eval_metrics=eval_metrics,
                       cancelled=cancelled, last_checkpoint=last_checkpoint,
                       optimizer_state_bytes=optimizer_state_bytes(optimizer, model))


def _base_model_name(model: nn.Module) -> str:
    name = getattr(getattr(model, "config", None), "name_or_path", None)
    return name if isinstance(name, str) and name else "unknown"
