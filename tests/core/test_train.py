"""train(): learning, loss masking, accumulation, schedules, progress, cancellation, bit-identical resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lorasp_core.adapters import apply_lorasp, lorasp_layers, read_adapter_metadata
from lorasp_core.config import LoraSPConfig
from lorasp_core.data import (
    ChatExample,
    ClassificationExample,
    CompletionExample,
    Example,
    tokenize_example,
)
from lorasp_core.models import make_tiny_tokenizer, tiny_random_bert, tiny_random_llama
from lorasp_core.precision import ResolvedPrecision
from lorasp_core.quantization import is_quantized, quantizable_linear_names
from lorasp_core.train_config import BaseDtype, BaseQuantization, EvalScope, MixedPrecision
from lorasp_core.trainer import ProgressEvent, TrainCallback, TrainConfig, evaluate, train

TOKENIZER = make_tiny_tokenizer()


def chat_data(n: int = 12) -> list[Example]:
    return [
        ChatExample(
            messages=(
                {"role": "user", "content": f"add {i} and {i % 5}" + "!" * (i % 4)},
                {"role": "assistant", "content": f"{i + i % 5}"},
            )
        )
        for i in range(n)
    ]


def completion_data(n: int = 12) -> list[Example]:
    return [
        CompletionExample(prompt=f"say {i} twice" + "." * (i % 3), completion=f" {i} {i}") for i in range(n)
    ]


def classification_data(n: int = 12) -> list[Example]:
    words = ["good", "bad", "meh"]
    return [
        ClassificationExample(text=f"{words[i % 3]} film number {i}" + "?" * (i % 4), label=words[i % 3])
        for i in range(n)
    ]


def llama(dropout: float = 0.0) -> nn.Module:
    return apply_lorasp(tiny_random_llama(), LoraSPConfig(r=4, dropout=dropout))


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: value.detach().clone()
        for name, value in model.state_dict().items()
        if "lora_" in name or "classifier" in name
    }


class Recorder(TrainCallback):
    def __init__(self, stop_after: int | None = None) -> None:
        self.events: list[ProgressEvent] = []
        self.checkpoints: list[Path] = []
        self.evaluations: list[dict[str, float]] = []
        self.scopes: list[tuple[int, EvalScope]] = []
        self.total_steps: int | None = None
        self.stop_after = stop_after

    def on_train_begin(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def on_progress(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def on_evaluate(self, step: int, metrics: dict[str, float], scope: EvalScope) -> None:
        self.evaluations.append(metrics)
        self.scopes.append((step, scope))

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.checkpoints.append(path)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.events) >= self.stop_after


def test_train_config_validation_and_round_trip() -> None:
    config = TrainConfig(task="causal-lm", lr_scheduler="cosine", warmup_ratio=0.1, max_steps=5)
    assert TrainConfig.from_dict(config.to_dict()) == config
    for kwargs, message in [
        ({"task": "seq-cls", "batching": "pack"}, "pack"),
        ({"task": "causal-lm", "checkpoint_every_steps": 2}, "checkpoint_dir"),
        ({"task": "causal-lm", "lr_scheduler": "plateau"}, "lr_scheduler"),
        ({"task": "causal-lm", "grad_accum_steps": 0}, "grad_accum_steps"),
        ({"task": "translate"}, "task"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**kwargs)  # type: ignore[arg-type]


def test_chat_training_learns_and_reports_progress() -> None:
    model, data = llama(), chat_data()
    config = TrainConfig(
        task="causal-lm",
        epochs=6,
        batch_size=4,
        learning_rate=2e-2,
        lr_scheduler="linear",
        warmup_ratio=0.2,
        eval_every_steps=4,
        full_eval_epochs=2,
        mixed_precision="no",
    )
    before = evaluate(model, TOKENIZER, data, config)
    recorder = Recorder()
    global_rng = torch.get_rng_state()
    result = train(config, model, TOKENIZER, data, eval_data=data, callbacks=[recorder])
    assert torch.equal(torch.get_rng_state(), global_rng)  # the caller's RNG is untouched
    assert result.steps == result.total_steps == recorder.total_steps == 18 and not result.cancelled
    # tiny-random-llama's frozen lm_head (std 0.02 after RMSNorm) bounds the logits, so the loss floor
    # is ~4.5 nats; half a nat in 18 steps shows learning
    assert result.eval_metrics is not None and result.eval_metrics["loss"] < before["loss"] - 0.5
    # real (non-padding) tokens only: every example once per epoch
    real_tokens = sum(len(tokenize_example(ex, TOKENIZER, max_length=512).input_ids) for ex in data)
    assert result.trained_tokens == 6 * real_tokens == recorder.events[-1].trained_tokens
    last = recorder.events[-1]
    assert last.step == 18 and last.epoch == pytest.approx(6.0) and last.eta_seconds == 0.0
    assert last.tokens_per_second > 0 and last.elapsed_seconds > 0
    # the sample every 4 steps and wherever the full set is evaluated: the ends of the last 2 epochs
    assert [e.step for e in recorder.events if e.eval_metrics] == [4, 8, 12, 15, 16, 18]
    assert [e.step for e in recorder.events if e.full_eval_metrics] == [15, 18]
    assert [step for step, scope in recorder.scopes if scope == "full"] == [15, 18]
    assert len(recorder.evaluations) == 8
    assert result.eval_metrics == recorder.events[-1].full_eval_metrics
    accuracies = [e.train_mean_token_accuracy for e in recorder.events]
    assert all(a is not None and 0.0 <= a <= 1.0 for a in accuracies)
    rates = [e.learning_rate for e in recorder.events]  # warmup (4 steps) then linear decay
    assert rates[0] == 0.0 and rates.index(max(rates)) == 4 and rates[-1] < rates[5]


def test_loss_counts_only_completion_tokens() -> None:
    model, example = llama(), completion_data(1)[0]
    config = TrainConfig(task="causal-lm", mixed_precision="no")
    tokenized = tokenize_example(example, TOKENIZER, max_length=512)
    assert isinstance(tokenized.labels, list) and -100 in tokenized.labels
    with torch.no_grad():
        reference = model(
            input_ids=torch.tensor([tokenized.input_ids]), labels=torch.tensor([tokenized.labels])
        ).loss
        unmasked = model(
            input_ids=torch.tensor([tokenized.input_ids]), labels=torch.tensor([tokenized.input_ids])
        ).loss
    metrics = evaluate(model, TOKENIZER, [example], config)
    loss = metrics["loss"]
    assert loss == pytest.approx(float(reference), abs=1e-5)
    assert abs(loss - float(unmasked)) > 1e-3
    # token accuracy: argmax of position t predicts label t+1, completion tokens only
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokenized.input_ids])).logits[0, :-1]
    labels = torch.tensor(tokenized.labels[1:])
    scored = labels != -100
    expected = float((logits.argmax(-1)[scored] == labels[scored]).float().mean())
    assert metrics["mean_token_accuracy"] == pytest.approx(expected)


def test_gradient_accumulation_matches_a_larger_batch() -> None:
    data = completion_data(8)
    results = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        model = llama()
        config = TrainConfig(
            task="causal-lm",
            batch_size=batch_size,
            grad_accum_steps=accumulation,
            batching="padded",
            max_steps=2,
            learning_rate=1e-2,
            mixed_precision="no",
        )
        assert train(config, model, TOKENIZER, data).steps == 2
        results.append(adapter_tensors(model))
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, atol=1e-5, rtol=1e-4)


def test_classification_trains_head_and_reports_accuracy() -> None:
    model = apply_lorasp(tiny_random_bert(num_labels=3), LoraSPConfig(r=4))
    head_before = model.classifier.weight.detach().clone()
    config = TrainConfig(task="seq-cls", epochs=4, batch_size=4, learning_rate=2e-2, mixed_precision="no")
    data = classification_data()
    result = train(config, model, TOKENIZER, data, eval_data=data)
    assert result.eval_metrics is not None
    assert set(result.eval_metrics) == {"loss", "accuracy", "mean_token_accuracy"}
    assert result.eval_metrics["accuracy"] >= 2 / 3
    assert not torch.equal(model.classifier.weight, head_before)
    assert result.train_loss is not None and result.steps == 12


@pytest.mark.parametrize(
    ("mixed_precision", "base_dtype", "base_quantization", "resolved"),
    [
        ("no", "auto", "none", ResolvedPrecision("fp32", "float32")),
        ("bf16", "float32", "none", ResolvedPrecision("bf16", "float32")),
        ("bf16", "bfloat16", "none", ResolvedPrecision("bf16", "bfloat16")),  # the frozen base held in bf16
        ("fp16", "float32", "none", ResolvedPrecision("fp16", "float32")),  # with a GradScaler
        ("no", "auto", "int8", ResolvedPrecision("fp32", "float32")),  # an int8 base under fp32 adapters
        ("bf16", "bfloat16", "int8", ResolvedPrecision("bf16", "bfloat16")),
    ],
)
def test_packing_and_every_cpu_precision_keep_frozen_entries_bit_identical(
    mixed_precision: MixedPrecision,
    base_dtype: BaseDtype,
    base_quantization: BaseQuantization,
    resolved: ResolvedPrecision,
) -> None:
    model, data = llama(), chat_data(10)
    frozen_before = {name: b.clone() for name, b in model.named_buffers() if name.endswith("_frozen")}
    trainable_before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    config = TrainConfig(
        task="causal-lm",
        batching="pack",
        max_length=128,
        batch_size=2,
        weight_decay=0.5,
        mixed_precision=mixed_precision,
        base_dtype=base_dtype,
        base_quantization=base_quantization,
        learning_rate=1e-2,
    )
    result = train(config, model, TOKENIZER, data)
    assert result.precision == resolved and result.base_quantization == base_quantization
    quantized = {f"{name}.weight" for name in quantizable_linear_names(model)}
    assert len(quantized) > 0
    assert all(is_quantized(model.get_parameter(name)) == (base_quantization != "none") for name in quantized)
    assert result.train_loss is not None and torch.isfinite(torch.tensor(result.train_loss))
    assert result.steps < 5  # ten examples packed into fewer 128-token rows
    for name, buffer in model.named_buffers():
        if name.endswith("_frozen"):
            assert buffer.dtype == torch.float32, name
            assert torch.equal(buffer.view(torch.int32), frozen_before[name].view(torch.int32)), name
    for name, parameter in model.named_parameters():  # adapters keep fp32 master weights
        expected = torch.float32 if name in trainable_before else resolved.base_torch_dtype
        assert parameter.dtype == expected, name
    assert all(
        not torch.equal(p, trainable_before[n]) for n, p in model.named_parameters() if p.requires_grad
    )
    assert any(torch.count_nonzero(layer.lora_B) > 0 for _, layer in lorasp_layers(model))


def test_evaluate_keeps_the_models_mode() -> None:
    model, config = llama(), TrainConfig(task="causal-lm")
    model.train()
    evaluate(model, TOKENIZER, completion_data(2), config)
    assert model.training
    model.eval()
    evaluate(model, TOKENIZER, completion_data(2), config)
    assert not model.training


def test_cancel_then_resume_is_bit_identical_to_a_straight_run(tmp_path: Path) -> None:
    data = completion_data(24)  # 6 micro-batches = 3 optimizer steps per epoch: step 10 is mid-epoch

    def config(**overrides: object) -> TrainConfig:
        base = dict(
            task="causal-lm",
            epochs=7,
            max_steps=20,
            batch_size=4,
            grad_accum_steps=2,
            learning_rate=1e-2,
            weight_decay=0.1,
            lr_scheduler="cosine",
            warmup_ratio=0.1,
            mixed_precision="no",
            checkpoint_every_steps=4,
        )
        return TrainConfig(**{**base, **overrides})  # type: ignore[arg-type]

    straight = llama(dropout=0.1)  # dropout: the RNG state must be restored too
    straight_result = train(config(checkpoint_dir=str(tmp_path / "a")), straight, TOKENIZER, data)
    assert straight_result.steps == 20

    first_half = llama(dropout=0.1)
    recorder = Recorder(stop_after=10)
    stopped = train(
        config(checkpoint_dir=str(tmp_path / "b")), first_half, TOKENIZER, data, callbacks=[recorder]
    )
    assert stopped.cancelled and stopped.steps == 10
    assert stopped.last_checkpoint == tmp_path / "b" / "step-10"
    assert [p.name for p in recorder.checkpoints] == ["step-4", "step-8", "step-10"]
    # written atomically: no temporary directories are left behind
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["step-10", "step-4", "step-8"]
    assert read_adapter_metadata(stopped.last_checkpoint).training_summary["step"] == 10  # type: ignore[index]

    resumed = llama(dropout=0.1)  # a fresh model object
    # validation while resuming (the straight run had none) must not move the result by a bit
    resume_config = config(
        checkpoint_dir=str(tmp_path / "c"),
        resume_from=str(stopped.last_checkpoint),
        eval_every_steps=3,
        eval_sample_size=2,
    )
    resumed_result = train(resume_config, resumed, TOKENIZER, data, eval_data=completion_data(5))
    assert resumed_result.eval_metrics is not None
    assert resumed_result.steps == 20 and not resumed_result.cancelled
    assert resumed_result.trained_tokens == straight_result.trained_tokens
    assert resumed_result.train_loss == straight_result.train_loss
    expected, actual = adapter_tensors(straight), adapter_tensors(resumed)
    assert expected.keys() == actual.keys()
    for name, value in expected.items():
        assert torch.equal(actual[name], value), name


def test_optimizer_state_of_lorasp_is_half_of_plain_lora_through_train() -> None:
    data, sizes = classification_data(6), {}
    for freeze_ratio in (0.0, 0.5):
        model = apply_lorasp(tiny_random_bert(num_labels=3), LoraSPConfig(r=8, freeze_ratio=freeze_ratio))
        config = TrainConfig(task="seq-cls", batch_size=6, max_steps=1, mixed_precision="no")
        sizes[freeze_ratio] = train(config, model, TOKENIZER, data).optimizer_state_bytes
    head_bytes = 2 * 4 * (64 * 3 + 3)  # exp_avg + exp_avg_sq, float32
    assert sizes[0.0]["adapter"] == 2 * 4 * 2 * 3 * (8 * 64 + 64 * 8)  # 2 layers x (query, key, value)
    assert sizes[0.5]["adapter"] * 2 == sizes[0.0]["adapter"]
    assert sizes[0.5]["other"] == sizes[0.0]["other"] == head_bytes
