"""Mixed-adapter classification: one shared encoder forward, then each row's own head and labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lorasp_core.serving.adapter_files import ParsedAdapter
from lorasp_core.serving.resident import ResidentModel, model_device
from lorasp_core.serving.types import ClassificationResult


def base_label_names(resident: ResidentModel) -> tuple[str, ...]:
    config = getattr(resident.model, "config", None)
    num_labels = int(getattr(config, "num_labels", 0) or 0)
    id2label: dict[Any, str] = dict(getattr(config, "id2label", None) or {})
    return tuple(str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(num_labels))


def adapter_label_names(resident: ResidentModel, adapter: ParsedAdapter) -> tuple[str, ...] | None:
    """lorasp.json's label_names, else LABEL_i for the adapter head's width; None for a causal LM."""
    if resident.task != "seq-cls":
        return None
    if adapter.label_names is not None:
        return adapter.label_names
    width = head_width(resident, adapter)
    base = base_label_names(resident)
    if width is None or len(base) == width:
        return base
    return tuple(f"LABEL_{i}" for i in range(width))


def head_width(resident: ResidentModel, adapter: ParsedAdapter) -> int | None:
    """Output width of the adapter's saved head: dim 0 of its last weight in module order."""
    width = None
    for path, params in adapter.saved_modules.items():
        module = resident.model.get_submodule(path)
        base_module = getattr(module, "base_module", module)  # already wrapped by a RowDispatchModule
        for name, _ in base_module.named_parameters():
            if name.endswith("weight") and name in params:
                width = int(params[name].shape[0])
    return width


def classify_rows(
    resident: ResidentModel,
    texts: Sequence[str],
    row_slots: Sequence[int],
    row_labels: Sequence[tuple[str, ...]],
) -> list[ClassificationResult]:
    """Run the shared base once with per-row slots; each row's logits are cut to its own label count."""
    if resident.task != "seq-cls":
        raise ValueError(f"base model {resident.name!r} is not a sequence classifier")
    tokenizer = resident.tokenizer
    config = getattr(resident.model, "config", None)
    limits = [
        int(getattr(tokenizer, "model_max_length", 0) or 0),
        int(getattr(config, "max_position_embeddings", 0)),
    ]
    max_length = min(limit for limit in limits if limit > 0) if any(limits) else 512
    # Truncation happens after tokenizing the whole text: cut what can never be read first, so a huge
    # input does not hold the shared tokenizer lock (the kept prefix gives the same first tokens).
    cap = resident.max_text_chars
    texts = [text[:cap] for text in texts] if cap is not None else list(texts)
    with resident.tokenizer_lock:
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    device = model_device(resident.model)
    inputs = {
        k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    slots = torch.tensor(list(row_slots), dtype=torch.long, device=device)
    with torch.inference_mode(), resident.active_slots(slots):
        logits = resident.model(**inputs).logits.float()
    results = []
    for row, labels in enumerate(row_labels):
        probs = torch.softmax(logits[row, : len(labels)], dim=-1).tolist()
        best = max(range(len(labels)), key=lambda i: probs[i])
        results.append(
            ClassificationResult(
                label=labels[best], score=probs[best], scores=dict(zip(labels, probs, strict=True))
            )
        )
    return results
