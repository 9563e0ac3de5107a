"""The LM head at supervised positions only: the loss and gradients of the full logits, fewer rows; and
gradient checkpointing: the gradients of a plain backward, with the layers really recomputed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorasp_core.adapters import apply_lorasp
from lorasp_core.checkpointing import gradient_checkpointing, resolve_gradient_checkpointing
from lorasp_core.config import LoraSPConfig
from lorasp_core.data import IGNORE_INDEX, ChatExample, CompletionExample
from lorasp_core.models import make_tiny_tokenizer, tiny_random_llama
from lorasp_core.target_logits import head_at_labels_supported, target_logits
from lorasp_core.trainer import TrainConfig, train
from lorasp_core.training_ops import count_targets


def prompt_masked_batch(vocab_size: int) -> dict[str, torch.Tensor]:
    """Three right-padded rows whose labels cover only their last tokens (a prompt, then an answer)."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, vocab_size, (3, 20), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 14:] = 0  # a shorter row
    input_ids[1, 14:] = 0
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, (start, end) in enumerate([(16, 20), (11, 14), (18, 20)]):
        labels[row, start:end] = input_ids[row, start:end]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def loss_and_grads(
    model: nn.Module, batch: dict[str, torch.Tensor], head_at_labels: bool, amp: torch.dtype | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    model.zero_grad(set_to_none=True)
    at_targets = target_logits(model, batch, amp, "causal-lm", head_at_labels)
    loss = at_targets.loss_sum()
    loss.backward()  # type: ignore[no-untyped-call]
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, at_targets.logits.shape[0]


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_head_at_labels_gives_the_full_logits_loss_and_gradients(
    architecture: str, tiny_gpt2: nn.Module
) -> None:
    base = tiny_random_llama() if architecture == "llama" else tiny_gpt2
    model = apply_lorasp(base, LoraSPConfig(r=4))
    with torch.no_grad():  # B starts at zero; give the adapters a say so their gradients differ
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    assert head_at_labels_supported(model)
    batch = prompt_masked_batch(model.get_input_embeddings().weight.shape[0])
    full_loss, full_grads, full_rows = loss_and_grads(model, batch, head_at_labels=False)
    loss, grads, rows = loss_and_grads(model, batch, head_at_labels=True)
    assert rows == count_targets(batch["labels"], "causal-lm") == 4 + 3 + 2  # only supervised rows
    assert full_rows == 3 * 19
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-5)
    assert set(grads) == set(full_grads) and len(grads) > 0
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_train_and_evaluate_agree_with_and_without_head_at_labels() -> None:
    data = [
        ChatExample(
            messages=(
                {"role": "user", "content": f"what is {i} plus {i}? answer briefly"},
                {"role": "assistant", "content": str(2 * i)},
            )
        )
        for i in range(8)
    ]
    results = []
    for head_at_labels in (True, False):
        config = TrainConfig(
            task="causal-lm", batch_size=4, mixed_precision="no", head_at_labels=head_at_labels
        )
        model = apply_lorasp(tiny_random_llama(), LoraSPConfig(r=4))
        results.append(train(config, model, make_tiny_tokenizer(), data, eval_data=data))
    sliced, full = results
    assert sliced.train_loss == pytest.approx(full.train_loss, rel=1e-5)
    assert sliced.eval_metrics is not None and full.eval_metrics is not None
    assert sliced.eval_metrics["loss"] == pytest.approx(full.eval_metrics["loss"], rel=1e-5)
    assert sliced.eval_metrics["mean_token_accuracy"] == full.eval_metrics["mean_token_accuracy"]


def test_gradient_checkpointing_recomputes_layers_and_keeps_the_gradients() -> None:
    model = apply_lorasp(tiny_random_llama(), LoraSPConfig(r=4))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    model.train()  # transformers checkpoints only in training mode
    batch = prompt_masked_batch(model.get_input_embeddings().weight.shape[0])
    mlp_calls = []
    # a pre-hook: the recompute stops early, once the tensors backward needs exist (before mlp returns)
    model.model.layers[0].mlp.register_forward_pre_hook(lambda *_: mlp_calls.append(1))
    _, plain, _ = loss_and_grads(model, batch, head_at_labels=True)
    assert len(mlp_calls) == 1
    with gradient_checkpointing(model, enabled=True):
        assert model.is_activation_checkpointing
        _, checkpointed, _ = loss_and_grads(model, batch, head_at_labels=True)
    assert len(mlp_calls) == 3  # forward, then recomputed in backward
    assert not model.is_activation_checkpointing  # restored
    assert set(checkpointed) == set(plain) and any("lora" in name for name in plain)
    for name, grad in checkpointed.items():
        torch.testing.assert_close(grad, plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_checkpointing_option_resolution_and_a_training_run() -> None:
    cpu = torch.device("cpu")
    assert resolve_gradient_checkpointing("auto", cpu) is False
    assert resolve_gradient_checkpointing(True, cpu) is True
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        TrainConfig(task="causal-lm", gradient_checkpointing="yes")  # type: ignore[arg-type]
    data = _completions()
    runs = []
    for enabled in (True, False):
        model = apply_lorasp(tiny_random_llama(), LoraSPConfig(r=4))
        config = TrainConfig(
            task="causal-lm", batch_size=4, mixed_precision="no", gradient_checkpointing=enabled
        )
        result = train(config, model, make_tiny_tokenizer(), data)
        assert result.gradient_checkpointing is enabled
        assert not model.is_activation_checkpointing
        runs.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    for name, value in runs[0].items():
        torch.testing.assert_close(value, runs[1][name], rtol=1e-4, atol=1e-6, msg=name)


def _completions() -> list[CompletionExample]:
    return [CompletionExample(prompt=f"say {i} twice", completion=f" {i} {i}") for i in range(8)]
