"""Helpers for the serving API tests: real LoRA-SP adapters of the tiny models, registered as Adapter rows,
a greedy reference decoder over the adapted model itself, and an SSE parser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session
from torch import nn

from lorasp_core.adapters import apply_lorasp, save_adapter
from lorasp_core.config import LoraSPConfig
from lorasp_core.models import make_tiny_tokenizer, tiny_random_bert, tiny_random_llama
from lorasp_service.ids import new_id
from lorasp_service.orm import Adapter
from lorasp_service.registry import new_adapter_id
from lorasp_service.settings import Settings
from lorasp_service.storage import BlobStorage

LLAMA = "tiny-random-llama"
BERT = "tiny-random-bert"


def _randomise(model: nn.Module, seed: int, *, head: bool = False) -> None:
    """B starts at zero (adapter = no-op): move its trainable half (and the head) as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B_trainable" in name or (head and parameter.requires_grad and "lora_" not in name):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def make_llama_adapter(
    directory: Path, seed: int, *, r: int = 4, targets: tuple[str, ...] | None = None
) -> nn.Module:
    """Save a LoRA-SP causal-LM adapter with non-zero B; returns the adapted model (the reference)."""
    config = LoraSPConfig(
        r=r, alpha=2.0 * r, freeze_ratio=0.5, mask_seed=seed, init_seed=seed, target_modules=targets
    )
    model = apply_lorasp(tiny_random_llama(seed=0), config)
    _randomise(model, seed)
    model.eval()
    save_adapter(model, directory, base_model_name_or_path=LLAMA, task_type="causal-lm")
    return model


def make_bert_adapter(directory: Path, seed: int, labels: list[str], *, r: int = 4) -> nn.Module:
    """Save a LoRA-SP seq-cls adapter with its own head of len(labels) outputs and those label names."""
    model = apply_lorasp(tiny_random_bert(num_labels=len(labels), seed=0), LoraSPConfig(r=r, mask_seed=seed))
    _randomise(model, seed, head=True)
    model.eval()
    save_adapter(model, directory, base_model_name_or_path=BERT, task_type="seq-cls", label_names=labels)
    return model


def register_adapter(
    db: Session,
    settings: Settings,
    tenant_id: str,
    directory: Path,
    *,
    base_model: str = LLAMA,
    task: str = "causal-lm",
    rank: int = 4,
    label_names: list[str] | None = None,
) -> str:
    """Store the directory and register the row the way the worker does; returns the model id."""
    storage = BlobStorage(settings.blob_dir)
    adapter_id = new_adapter_id(base_model, "serve")
    dir_key = f"adapters/{new_id('test')}"
    storage.put_dir(dir_key, directory)
    size, sha256 = storage.archive_dir(dir_key, dir_key + ".tar.gz")
    db.add(
        Adapter(
            id=adapter_id,
            tenant_id=tenant_id,
            base_model=base_model,
            task=task,
            storage_key=dir_key,
            archive_key=dir_key + ".tar.gz",
            sha256=sha256,
            bytes=size,
            rank=rank,
            freeze_ratio=0.5,
            target_modules=["q_proj", "v_proj"],
            label_names=label_names,
        )
    )
    db.commit()
    return adapter_id


def adapter_path(db: Session, settings: Settings, adapter_id: str) -> Path:
    row = db.get(Adapter, adapter_id)
    assert row is not None
    return BlobStorage(settings.blob_dir).path(row.storage_key)


@torch.inference_mode()
def greedy_text(model: nn.Module, prompt_ids: list[int], max_tokens: int) -> str:
    """Plain greedy decoding on the model itself (full forward each step), stopping at EOS: the tokenizer's
    and the generation config's (which lists <|im_end|> for the tiny Llama)."""
    tokenizer = make_tiny_tokenizer()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = [configured] if isinstance(configured, int) else list(configured or [])
    stop_ids = {tokenizer.eos_token_id, *configured}
    ids = list(prompt_ids)
    generated: list[int] = []
    for _ in range(max_tokens):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        token = int(logits.argmax())
        if token in stop_ids:
            break
        generated.append(token)
        ids.append(token)
    return str(tokenizer.decode(generated, skip_special_tokens=True))


def prompt_ids(prompt: str) -> list[int]:
    return list(make_tiny_tokenizer()(prompt)["input_ids"])


def chat_ids(messages: list[dict[str, str]]) -> list[int]:
    tokenizer = make_tiny_tokenizer()
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def sse_payloads(body: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded, with the final "[DONE]" kept as a string."""
    events = [block for block in body.split("\n\n") if block.strip()]
    payloads: list[Any] = []
    for event in events:
        assert event.startswith("data: "), event
        data = event[len("data: ") :]
        payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads
