"""Fixtures for the adapter / training tests: tiny in-code models, a few real optimizer steps."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def random_token_batch(vocab_size: int, *, batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(5, vocab_size, (batch, length), generator=generator)


def train_a_few_steps(
    model: nn.Module,
    *,
    steps: int = 3,
    lr: float = 1e-2,
    weight_decay: float = 0.1,
    labels: torch.Tensor | None = None,
    bf16: bool = False,
) -> torch.optim.AdamW:
    """Real AdamW steps (weight decay, clipping) so B != 0 and the head moves."""
    vocab_size = model.get_input_embeddings().weight.shape[0]
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )
    model.train()
    for step in range(steps):
        input_ids = random_token_batch(vocab_size, seed=step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if labels is None:
                loss = model(input_ids=input_ids, labels=input_ids).loss
            else:
                loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return optimizer


@pytest.fixture
def tiny_llama() -> nn.Module:
    from lorasp_core.models import tiny_random_llama

    return tiny_random_llama(seed=0)


@pytest.fixture
def tiny_bert() -> nn.Module:
    from lorasp_core.models import tiny_random_bert

    return tiny_random_bert(num_labels=3, seed=0)


@pytest.fixture
def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=2
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    return model.eval()


@pytest.fixture
def train_steps() -> object:
    """The `train_a_few_steps` helper (a fixture, so test files need not import conftest)."""
    return train_a_few_steps


@pytest.fixture
def token_batch() -> object:
    return random_token_batch
