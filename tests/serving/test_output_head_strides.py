"""The output head of a served model always gets its input with default (contiguous) strides.

A prefill's last-position slice of the hidden states, (B, 1, d) with the strides of (B, T, d), sent
torch's matmul down a bmm on a copy of the whole expanded head weight when the weights are frozen
(~70 ms per row for smollm2's bf16 head on a 2-core CPU, against ~3 ms folded into one mm).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from serving_fixtures import TINY_LLAMA_NAME
from torch import nn

from lorasp_core.serving import GenerationRequest, ServingEngine
from lorasp_core.serving.resident import _give_head_default_strides

EngineFactory = Callable[..., ServingEngine]


def test_every_prefill_and_step_hands_the_head_default_strides(make_engine: EngineFactory) -> None:
    engine = make_engine(max_adapters=1)
    resident = engine.base_model(TINY_LLAMA_NAME)
    head = resident.model.get_output_embeddings()
    assert isinstance(head, nn.Module)
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append((tuple(args[0].shape), args[0].stride()))

    handle = head.register_forward_pre_hook(record)  # runs after the resident's own hook
    try:
        requests = [
            GenerationRequest(model=TINY_LLAMA_NAME, prompt=prompt, max_tokens=3)
            for prompt in ("a longer prompt of several tokens", "hi")
        ]
        engine.generate_batch(requests)
    finally:
        handle.remove()
    assert len(seen) == 3  # the prefill, then two decode steps
    for shape, stride in seen:
        assert stride == torch.empty(shape).stride(), (shape, stride)


def test_the_hook_copies_only_a_strided_input_and_keeps_its_values() -> None:
    hidden = torch.randn(3, 7, 16)
    last = hidden[:, -1:, :]
    (fixed,) = _give_head_default_strides(nn.Identity(), (last,)) or (last,)
    assert fixed.stride() == (16, 16, 1) and torch.equal(fixed, last)
    plain = torch.randn(3, 1, 16)
    assert _give_head_default_strides(nn.Identity(), (plain,)) is None
    assert _give_head_default_strides(nn.Identity(), (torch.randn(3, 16),)) is None
