"""One SST-2 encoder run per process: full fine-tuning, PEFT LoRA (plain / length-grouped), ours.

The PEFT baselines are written the way a PEFT user writes them today: `get_peft_model` plus a plain
PyTorch loop. Every method shares the model, data sample, batch size, epochs, max length, rank,
alpha, target modules, optimizer (AdamW, weight decay 0.01), linear schedule with 6% warmup,
gradient clipping 1.0 and the accuracy function.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from transformers import get_scheduler
from transformers.trainer_pt_utils import LengthGroupedSampler

from benchmarks.common import LabelledSentence

TARGET_MODULES = ("query", "key", "value", "dense")  # every Linear of MiniLM's encoder layers
WARMUP_RATIO = 0.06
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0


@torch.no_grad()
def accuracy(model: nn.Module, tokenizer: Any, rows: list[LabelledSentence], max_length: int) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(rows), 64):
        chunk = rows[start : start + 64]
        batch = tokenizer(
            [r.text for r in chunk], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        predictions = model(**batch).logits.argmax(dim=-1)
        correct += int((predictions == torch.tensor([r.label for r in chunk])).sum())
    model.train(was_training)
    return correct / len(rows)


def real_tokens(tokenizer: Any, rows: list[LabelledSentence], max_length: int, epochs: int) -> int:
    """Non-padding tokens the training sees: the same count for every method."""
    encoded = tokenizer([r.text for r in rows], truncation=True, max_length=max_length)
    return epochs * sum(len(ids) for ids in encoded["input_ids"])


def adam_state_bytes(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> int:
    total = 0
    for param in params:
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                total += value.numel() * value.element_size()
    return total


def train_plain_loop(
    model: nn.Module,
    tokenizer: Any,
    rows: list[LabelledSentence],
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    max_length: int,
    seed: int,
    grouped: bool,
) -> torch.optim.Optimizer:
    """A plain PyTorch loop. `grouped=False`: pad every batch to max_length (the tutorial recipe);
    `grouped=True`: length-grouped batches (HF's LengthGroupedSampler) with dynamic padding."""
    generator = torch.Generator().manual_seed(seed)
    encoded = tokenizer(
        [r.text for r in rows],
        truncation=True,
        max_length=max_length,
        padding=False if grouped else "max_length",
    )
    labels = torch.tensor([r.label for r in rows])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = (len(rows) + batch_size - 1) // batch_size
    scheduler = get_scheduler(
        "linear",
        optimizer,
        num_warmup_steps=int(WARMUP_RATIO * steps_per_epoch * epochs),
        num_training_steps=steps_per_epoch * epochs,
    )
    model.train()
    for _ in range(epochs):
        if grouped:
            lengths = [len(ids) for ids in encoded["input_ids"]]
            order = list(LengthGroupedSampler(batch_size, lengths=lengths, generator=generator))
        else:
            order = torch.randperm(len(rows), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            features = [{k: encoded[k][i] for k in encoded} for i in index]
            batch = tokenizer.pad(features, return_tensors="pt")
            loss = model(**batch, labels=labels[index]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    return optimizer


def run_encoder(
    spec: dict[str, Any], train_rows: list[LabelledSentence], eval_rows: list[LabelledSentence]
) -> dict[str, Any]:
    from lorasp_core import load_base_model

    method, seed, lr = spec["method"], spec["seed"], spec["learning_rate"]
    epochs, batch_size, max_length = spec["epochs"], spec["batch_size"], spec["max_length"]
    torch.manual_seed(seed)
    loaded = load_base_model("minilm-l6", task="seq-cls", num_labels=2, seed=seed)
    model, tokenizer = loaded.model, loaded.tokenizer

    start = time.perf_counter()
    if method in ("lora", "lorasp"):
        trainable, state_bytes = _train_ours(model, tokenizer, train_rows, spec)
    else:
        if method == "full":
            adapter_params = [p for p in model.parameters()]
        else:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(
                r=spec["r"],
                lora_alpha=spec["alpha"],
                target_modules=list(TARGET_MODULES),
                lora_dropout=0.0,
                task_type="SEQ_CLS",
            )
            model = get_peft_model(model, config)
            adapter_params = [p for n, p in model.named_parameters() if "lora_" in n]
        optimizer = train_plain_loop(
            model,
            tokenizer,
            train_rows,
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            max_length=max_length,
            seed=seed,
            grouped=method == "peft-lora-grouped",
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        state_bytes = adam_state_bytes(optimizer, adapter_params)
    train_seconds = time.perf_counter() - start

    return {
        "dev_accuracy": accuracy(model, tokenizer, eval_rows, max_length),
        "train_seconds": train_seconds,
        "tokens_per_second": real_tokens(tokenizer, train_rows, max_length, epochs) / train_seconds,
        "trainable_parameters": trainable,
        "optimizer_state_bytes": state_bytes,
    }


def _train_ours(
    model: nn.Module, tokenizer: Any, rows: list[LabelledSentence], spec: dict[str, Any]
) -> tuple[int, int]:
    from lorasp_core import (
        ClassificationExample,
        LoraSPConfig,
        TrainConfig,
        apply_lorasp,
        train,
        trainable_parameters,
    )

    freeze_ratio = 0.0 if spec["method"] == "lora" else spec.get("freeze_ratio", 0.5)
    config = LoraSPConfig(
        r=spec["r"],
        alpha=spec["alpha"],
        target_modules=TARGET_MODULES,
        freeze_ratio=freeze_ratio,
        mask_seed=spec["seed"],
        init_seed=spec["seed"],
    )
    apply_lorasp(model, config)
    examples = [ClassificationExample(text=r.text, label=str(r.label)) for r in rows]
    train_config = TrainConfig(
        task="seq-cls",
        epochs=spec["epochs"],
        batch_size=spec["batch_size"],
        learning_rate=spec["learning_rate"],
        weight_decay=WEIGHT_DECAY,
        lr_scheduler="linear",
        warmup_ratio=WARMUP_RATIO,
        max_grad_norm=MAX_GRAD_NORM,
        max_length=spec["max_length"],
        seed=spec["seed"],
        batching="group_by_length",
    )
    result = train(train_config, model, tokenizer, examples, label_names=["0", "1"])
    return trainable_parameters(model), int(result.optimizer_state_bytes["adapter"])
