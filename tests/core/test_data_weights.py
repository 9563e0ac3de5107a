"""Per-message `weight`: 0 masks an assistant turn out of the loss (and the gradient), 1 trains it;
anything else, a line with no trained turn and a file with none are refused with line and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lorasp_core import LoraSPConfig, apply_lorasp
from lorasp_core.data import (
    IGNORE_INDEX,
    ChatExample,
    TokenizedExample,
    UntrainedExampleProblem,
    collate,
    parse_messages,
    render_chat,
    tokenize_example,
    validate_dataset,
)
from lorasp_core.models import make_tiny_tokenizer, tiny_random_llama
from lorasp_core.training_ops import forward_logits, loss_sum_and_targets

MASKED_REPLY = "Mask me: nothing here should be learned."


def conversation(weight: Any = None) -> dict[str, Any]:
    """Three assistant turns; the second carries `weight` (absent when None)."""
    middle: dict[str, Any] = {"role": "assistant", "content": MASKED_REPLY}
    if weight is not None:
        middle["weight"] = weight
    return {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "One?"},
            {"role": "assistant", "content": "First answer."},
            {"role": "user", "content": "Two?"},
            middle,
            {"role": "user", "content": "Three?"},
            {"role": "assistant", "content": "Third answer.", "weight": 1},
        ]
    }


def example(weight: Any = None) -> ChatExample:
    result = parse_messages(conversation(weight), 1)
    assert isinstance(result, ChatExample), result
    return result


def masked_by_hand(tokenized: TokenizedExample, tokenizer: Any) -> TokenizedExample:
    """The trained tokens of MASKED_REPLY and its end-of-turn marker set to -100, found from offsets."""
    rendered = render_chat(tokenizer, example().messages)
    turn = MASKED_REPLY + "<|im_end|>"
    start = rendered.index(turn)
    offsets = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert isinstance(tokenized.labels, list)
    labels = [
        IGNORE_INDEX if start <= token_start < start + len(turn) else label
        for label, (token_start, _end) in zip(tokenized.labels, offsets, strict=True)
    ]
    assert labels != tokenized.labels  # the turn was trained before masking
    return TokenizedExample(input_ids=tokenized.input_ids, labels=labels)


def adapter_gradients(tokenized: TokenizedExample) -> list[torch.Tensor]:
    """Gradients of the adapter parameters for one example, with the trainer's loss."""
    model = apply_lorasp(tiny_random_llama(seed=3), LoraSPConfig(r=4, init_seed=1))
    with torch.no_grad():  # B starts at zero, which would leave A without gradient
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and "lora_B" in name:
                parameter.add_(
                    0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(7))
                )
    model.train()
    batch = collate([tokenized], pad_id=0)
    loss_sum, count = loss_sum_and_targets(forward_logits(model, batch, None), batch["labels"], "causal-lm")
    (loss_sum / count).backward()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad and p.grad is not None]


def test_weight_zero_gradient_equals_masking_the_turn_and_differs_from_weight_one() -> None:
    tokenizer = make_tiny_tokenizer()
    weight_zero = tokenize_example(example(0), tokenizer, max_length=4096)
    weight_one = tokenize_example(example(1), tokenizer, max_length=4096)
    assert tokenize_example(example(), tokenizer, max_length=4096) == weight_one  # absent means 1
    by_hand = masked_by_hand(weight_one, tokenizer)
    assert weight_zero.input_ids == weight_one.input_ids  # the turn stays in the context
    assert weight_zero.labels == by_hand.labels

    zero_grads = adapter_gradients(weight_zero)
    hand_grads = adapter_gradients(by_hand)
    one_grads = adapter_gradients(weight_one)
    assert len(zero_grads) == len(one_grads) > 0
    for zero, hand in zip(zero_grads, hand_grads, strict=True):
        torch.testing.assert_close(zero, hand, rtol=0, atol=0)
    assert any(not torch.allclose(zero, one) for zero, one in zip(zero_grads, one_grads, strict=True))


@pytest.mark.parametrize(
    ("weight", "shown"),
    [(True, "boolean True"), (0.5, "number 0.5"), ("0", "string '0'"), (2, "integer 2"), (1.0, "number 1.0")],
)
def test_weights_other_than_zero_or_one_are_refused_with_the_field(weight: Any, shown: str) -> None:
    result = parse_messages(conversation(weight), 5)
    assert isinstance(result, list)
    assert [(p.line, p.field, p.reason) for p in result] == [
        (5, "messages[4].weight", f"must be 0 or 1, got {shown}")
    ]


def test_a_line_and_a_file_whose_every_assistant_turn_has_weight_zero_are_refused(tmp_path: Path) -> None:
    silent = conversation(0)
    for message in silent["messages"]:
        if message["role"] == "assistant":
            message["weight"] = 0
    result = parse_messages(silent, 3)
    assert isinstance(result, list) and len(result) == 1
    assert isinstance(result[0], UntrainedExampleProblem) and result[0].field == "messages"

    path = tmp_path / "silent.jsonl"
    path.write_text(json.dumps(silent) + "\n" + json.dumps(silent) + "\n")
    report = validate_dataset(path)
    assert [(p.line, p.reason) for p in report.problems] == [
        (1, "every assistant message has weight 0: nothing to train on"),
        (2, "every assistant message has weight 0: nothing to train on"),
        (0, "every assistant message in the file has weight 0: nothing to train on"),
    ]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(conversation(0)) + "\n" + json.dumps(conversation(1)) + "\n")
    assert validate_dataset(mixed, tokenizer=make_tiny_tokenizer()).ok
