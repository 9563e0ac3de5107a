"""Our DPO loss and its gradients agree with TRL's DPOTrainer (the reference implementation) on one batch.

Same policy (a LoRA-SP tiny Llama with non-zero adapters), same reference (that model with the adapters
switched off, as TRL's reference for a fresh adapter), same token sequences: TRL's collator builds its
batch from our pair tokenization and its `compute_loss` (sigmoid loss, precomputed reference log-probs)
runs on it. The one intended tokenization difference is checked apart: TRL tokenizes the whole rendered
conversation, so its completion also holds the newline the template writes after the end-of-turn
marker; we leave that formatting out of the answer, as our chat path does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from torch import nn
from trl import DPOConfig, DPOTrainer

from lorasp_core.adapters import adapters_disabled, apply_lorasp, lorasp_layers
from lorasp_core.config import LoraSPConfig
from lorasp_core.data import PreferenceExample, TokenizedPair
from lorasp_core.dpo import collate_pairs, dpo_loss, pair_log_probs, tokenize_pairs
from lorasp_core.models import make_tiny_tokenizer, tiny_random_llama
from lorasp_core.trainer import TrainConfig

TOKENIZER = make_tiny_tokenizer()
BETA = 0.3

EXAMPLES = [
    PreferenceExample(
        prompt=(
            {"role": "system", "content": "answer briefly"},
            {"role": "user", "content": f"is {word} good?"},
        ),
        chosen={"role": "assistant", "content": good},
        rejected={"role": "assistant", "content": bad},
    )
    for word, good, bad in (
        ("cake", "yes", "no, never"),
        ("mud", "not at all", "yes"),
        ("tea", "yes!", "meh"),
    )
]


def policy() -> nn.Module:
    model = apply_lorasp(tiny_random_llama(), LoraSPConfig(r=4, freeze_ratio=0.5))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # a trained adapter: B != 0, so policy and reference differ
        for _, layer in lorasp_layers(model):
            layer.lora_B_trainable.copy_(torch.randn(layer.lora_B_trainable.shape, generator=generator) * 0.3)
    return model


def adapter_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    grads = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
            grads[name] = parameter.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    return grads


def trl_example(pair: TokenizedPair, reference: torch.Tensor) -> dict[str, object]:
    labels = pair.chosen.labels
    assert isinstance(labels, list)
    prompt_length = next(index for index, label in enumerate(labels) if label != -100)
    return {
        "prompt_ids": pair.chosen.input_ids[:prompt_length],
        "chosen_ids": pair.chosen.input_ids[prompt_length:],
        "rejected_ids": pair.rejected.input_ids[prompt_length:],
        "ref_chosen_logps": float(reference[0]),
        "ref_rejected_logps": float(reference[1]),
    }


def trl_rows() -> list[dict[str, object]]:
    return [{"prompt": list(ex.prompt), "chosen": [ex.chosen], "rejected": [ex.rejected]} for ex in EXAMPLES]


def test_loss_and_adapter_gradients_match_trl(tmp_path: Path) -> None:
    model = policy()
    model.train()
    pairs = tokenize_pairs(EXAMPLES, TOKENIZER, TrainConfig(task="causal-lm", objective="dpo"))
    batch = collate_pairs(pairs, pad_id=0)
    with torch.no_grad(), adapters_disabled(model):
        reference = pair_log_probs(model, batch, None)
    ours = dpo_loss(pair_log_probs(model, batch, None), reference, BETA).losses.mean()
    ours.backward()  # type: ignore[no-untyped-call]
    our_grads = adapter_grads(model)

    args = DPOConfig(
        output_dir=str(tmp_path),
        beta=BETA,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=True,
        max_length=None,
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=len(EXAMPLES),
        dataset_num_proc=None,
    )
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(trl_rows()), processing_class=TOKENIZER
    )
    inputs = trainer.data_collator([trl_example(p, r) for p, r in zip(pairs, reference, strict=True)])
    theirs = trainer.compute_loss(model, inputs)
    assert isinstance(theirs, torch.Tensor)
    theirs.backward()  # type: ignore[no-untyped-call]
    trl_grads = adapter_grads(model)

    loss = ours.item()
    assert loss > 0.1 and abs(loss - float(torch.log(torch.tensor(2.0)))) > 1e-3  # not trivial
    assert loss == pytest.approx(theirs.item(), abs=1e-5)
    assert set(our_grads) == set(trl_grads) and our_grads
    for name, grad in our_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, trl_grads[name], rtol=0, atol=1e-5, msg=name)

    # TRL's own tokenization of the same rows: the same prompt, and each answer plus the newline
    tokenized = trainer.train_dataset
    newline = TOKENIZER("\n", add_special_tokens=False)["input_ids"]
    for row, ours_row in zip(
        tokenized, (trl_example(p, r) for p, r in zip(pairs, reference, strict=True)), strict=True
    ):
        assert row["prompt_ids"] == ours_row["prompt_ids"]
        assert row["chosen_ids"] == [*ours_row["chosen_ids"], *newline]  # type: ignore[misc]
        assert row["rejected_ids"] == [*ours_row["rejected_ids"], *newline]  # type: ignore[misc]
