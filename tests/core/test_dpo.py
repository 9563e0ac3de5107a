"""train(objective="dpo"): the reference policy (adapters off / the starting adapter), the loss and its
figures, and a resume that keeps the original reference."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from lorasp_core.adapters import adapters_disabled, apply_lorasp, lorasp_layers, merge_adapters
from lorasp_core.checkpoint import load_trainer_state
from lorasp_core.config import LoraSPConfig
from lorasp_core.data import ChatExample, Example, PreferenceExample
from lorasp_core.dpo import collate_pairs, pair_log_probs, reference_log_probs, tokenize_pairs
from lorasp_core.models import make_tiny_tokenizer, tiny_random_llama
from lorasp_core.train_config import DPO_METRICS
from lorasp_core.trainer import ProgressEvent, TrainCallback, TrainConfig, train

TOKENIZER = make_tiny_tokenizer()


def preference_data(n: int = 8) -> list[Example]:
    """Sentiment pairs: the right label is preferred (learnable by the tiny model in a few steps)."""
    labels = ("negative", "positive")
    return [
        PreferenceExample(
            prompt=({"role": "user", "content": " ".join([("awful", "great")[i % 2]] * 4) + f" #{i}"},),
            chosen={"role": "assistant", "content": labels[i % 2]},
            rejected={"role": "assistant", "content": labels[1 - i % 2]},
        )
        for i in range(n)
    ]


def llama() -> nn.Module:
    return apply_lorasp(tiny_random_llama(), LoraSPConfig(r=4))


def perturb_adapters(model: nn.Module, seed: int = 1) -> None:
    """Non-zero B (as a trained parent adapter has), so the adapters change the model's function."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lorasp_layers(model):
            layer.lora_B_trainable.copy_(torch.randn(layer.lora_B_trainable.shape, generator=generator) * 0.5)


def dpo_config(**overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "task": "causal-lm",
        "objective": "dpo",
        "batch_size": 4,
        "learning_rate": 5e-2,
        "device": "cpu",
        "seed": 3,
        # fp32 whatever the CPU: the references below are computed in fp32 ("auto" is bf16 on some CPUs)
        "mixed_precision": "no",
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


class Events(TrainCallback):
    def __init__(self, stop_after: int | None = None) -> None:
        self.events: list[ProgressEvent] = []
        self.stop_after = stop_after

    def on_progress(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.events) >= self.stop_after


def test_adapters_disabled_computes_the_base_model_and_restores_the_adapters() -> None:
    base, model = tiny_random_llama(), llama()
    perturb_adapters(model)
    ids = torch.tensor([[1, 10, 20, 30, 40]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with adapters_disabled(model):
            switched_off = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
        plain = base(input_ids=ids).logits
    assert not torch.allclose(adapted, plain, atol=1e-4)  # the adapters do change the function
    torch.testing.assert_close(switched_off, plain, rtol=0, atol=0)
    torch.testing.assert_close(after, adapted, rtol=0, atol=0)
    merge_adapters(model)
    with pytest.raises(ValueError, match="unmerged"), adapters_disabled(model):
        pass


def test_dpo_starts_at_log_2_and_learns_to_prefer_the_chosen_answers() -> None:
    events = Events()
    result = train(dpo_config(epochs=6), llama(), TOKENIZER, preference_data(), callbacks=[events])
    first, last = events.events[0], events.events[-1]
    assert result.steps == 12 and len(events.events) == 12
    # policy == reference before the first update: every implicit reward is 0, the loss log(2)
    assert first.train_loss == pytest.approx(math.log(2), abs=1e-5)
    assert first.objective_metrics is not None and set(first.objective_metrics) == set(DPO_METRICS)
    assert first.objective_metrics["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert first.train_mean_token_accuracy is None
    assert last.objective_metrics is not None
    assert last.objective_metrics["rewards/accuracies"] == 1.0
    assert last.objective_metrics["rewards/margins"] > 0.25 and last.train_loss < 0.6
    chosen_minus_rejected = (
        last.objective_metrics["rewards/chosen"] - last.objective_metrics["rewards/rejected"]
    )
    assert chosen_minus_rejected == pytest.approx(last.objective_metrics["rewards/margins"], abs=1e-5)


def test_the_reference_is_the_starting_adapter_of_a_continued_job() -> None:
    pairs = tokenize_pairs(preference_data(), TOKENIZER, dpo_config())
    model = llama()
    perturb_adapters(model)  # a fine-tuned parent
    reference = reference_log_probs(model, pairs, 0, 4, torch.device("cpu"), None)
    with torch.no_grad():
        parent = pair_log_probs(model.eval(), collate_pairs(pairs, 0), None)
        with adapters_disabled(model):
            base = pair_log_probs(model, collate_pairs(pairs, 0), None)
    torch.testing.assert_close(reference, parent, rtol=0, atol=1e-5)
    assert not torch.allclose(reference, base, atol=1e-2)
    events = Events()
    train(dpo_config(max_steps=1), model, TOKENIZER, preference_data(), callbacks=[events])
    assert events.events[0].train_loss == pytest.approx(math.log(2), abs=1e-5)  # not the base's loss


def test_a_resumed_run_keeps_the_original_reference_and_ends_bit_identical(tmp_path: Path) -> None:
    straight = llama()  # 2 epochs of 2 steps; the run below stops after 3, mid-epoch
    train(dpo_config(epochs=2), straight, TOKENIZER, preference_data())
    stopped = train(
        dpo_config(epochs=2, checkpoint_dir=str(tmp_path)),
        llama(),
        TOKENIZER,
        preference_data(),
        callbacks=[Events(stop_after=3)],
    )
    assert stopped.cancelled and stopped.last_checkpoint is not None
    checkpoint = stopped.last_checkpoint
    assert checkpoint.name == "step-3"
    stored = load_trainer_state(checkpoint).reference_log_probs
    pairs = tokenize_pairs(preference_data(), TOKENIZER, dpo_config())
    assert stored is not None
    torch.testing.assert_close(stored, reference_log_probs(llama(), pairs, 0, 4, torch.device("cpu"), None))
    resumed = llama()  # a fresh base model: the checkpoint brings the weights and the reference
    train(dpo_config(epochs=2, resume_from=str(checkpoint)), resumed, TOKENIZER, preference_data())
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_dpo_configs_and_data_are_checked() -> None:
    with pytest.raises(ValueError, match="dpo_beta"):
        dpo_config(dpo_beta=0.0)
    with pytest.raises(ValueError, match="causal-lm"):
        dpo_config(task="seq-cls")
    with pytest.raises(ValueError, match="pack"):
        dpo_config(batching="pack")
    chat: list[Example] = [
        ChatExample(({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}))
    ]
    with pytest.raises(ValueError, match="preference examples"):
        train(dpo_config(), llama(), TOKENIZER, chat)
    with pytest.raises(ValueError, match="validation"):
        train(dpo_config(), llama(), TOKENIZER, preference_data(), eval_data=preference_data(2))
