"""The trainer's epoch-end hook: called once per completed epoch with the model as trained so far (the
service saves each epoch's adapter from it as a user-visible checkpoint model)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lorasp_core.adapters import apply_lorasp
from lorasp_core.config import LoraSPConfig
from lorasp_core.data import CompletionExample, Example
from lorasp_core.models import make_tiny_tokenizer, tiny_random_llama
from lorasp_core.trainer import TrainCallback, TrainConfig, train

TOKENIZER = make_tiny_tokenizer()


def data(n: int = 12) -> list[Example]:
    return [CompletionExample(prompt=f"say {i} twice", completion=f" {i} {i}") for i in range(n)]


def lora_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items() if "lora_" in name}


class EpochRecorder(TrainCallback):
    def __init__(self) -> None:
        self.ends: list[tuple[int, int]] = []
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, step: int, epoch: int, model: Any) -> None:
        self.ends.append((step, epoch))
        self.snapshots.append(lora_tensors(model))


def test_epoch_end_is_called_per_completed_epoch_with_the_trained_model() -> None:
    model = apply_lorasp(tiny_random_llama(), LoraSPConfig(r=4))
    config = TrainConfig(
        task="causal-lm", epochs=3, batch_size=4, batching="padded", learning_rate=1e-2, mixed_precision="no"
    )
    recorder = EpochRecorder()
    result = train(config, model, TOKENIZER, data(), callbacks=[recorder])
    assert result.steps == 9 and recorder.ends == [(3, 0), (6, 1), (9, 2)]
    final = lora_tensors(model)
    assert all(torch.equal(final[name], value) for name, value in recorder.snapshots[-1].items())
    # the snapshots are of different, trained states (not one tensor seen three times)
    assert any(not torch.equal(final[name], value) for name, value in recorder.snapshots[0].items())


def test_a_run_stopped_mid_epoch_reports_only_the_epochs_it_finished() -> None:
    model = apply_lorasp(tiny_random_llama(), LoraSPConfig(r=4))
    config = TrainConfig(
        task="causal-lm", epochs=3, batch_size=4, batching="padded", max_steps=4, mixed_precision="no"
    )
    recorder = EpochRecorder()
    assert train(config, model, TOKENIZER, data(), callbacks=[recorder]).steps == 4
    assert recorder.ends == [(3, 0)]
