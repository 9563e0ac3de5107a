"""Mixed-adapter classification: shared encoder, per-adapter heads and labels, equal to PEFT."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from serving_fixtures import TINY_BERT_NAME, make_bert_adapter, make_tiny_tokenizer, tiny_random_bert
from torch import nn

from lorasp_core.serving import ServingEngine

EngineFactory = Callable[..., ServingEngine]
TEXTS = ["a wonderful film", "bad", "it was fine I guess, nothing special", "terrible acting"]
LABELS = {"c3": ["neg", "neu", "pos"], "c4": ["w", "x", "y", "z"]}


@pytest.fixture(scope="module")
def peft_models(adapter_dir: Path) -> dict[str, nn.Module]:
    return {
        name: make_bert_adapter(adapter_dir / name, seed=i + 5, labels=labels)
        for i, (name, labels) in enumerate(LABELS.items())
    }


@pytest.fixture
def engine(make_engine: EngineFactory, adapter_dir: Path, peft_models: dict[str, nn.Module]) -> ServingEngine:
    engine = make_engine(max_adapters=2)
    for name in peft_models:
        engine.load_adapter(name, adapter_dir / name, TINY_BERT_NAME)
    return engine


def reference_probs(model: nn.Module, text: str) -> torch.Tensor:
    with torch.inference_mode():
        logits = model(**make_tiny_tokenizer()(text, return_tensors="pt")).logits[0]
    return torch.softmax(logits, dim=-1)


def test_mixed_batch_matches_peft_heads_and_bare_base(
    engine: ServingEngine, peft_models: dict[str, nn.Module]
) -> None:
    bare = tiny_random_bert(num_labels=2, seed=0)
    items: list[tuple[str | None, str]] = [
        ("c3", TEXTS[0]),
        (None, TEXTS[1]),
        ("c4", TEXTS[2]),
        ("c3", TEXTS[3]),
    ]
    results = engine.classify_batch(TINY_BERT_NAME, items)
    for (adapter_id, text), result in zip(items, results, strict=True):
        expected = reference_probs(peft_models[adapter_id] if adapter_id else bare, text)
        labels = LABELS[adapter_id] if adapter_id else ["LABEL_0", "LABEL_1"]
        assert list(result.scores) == labels
        torch.testing.assert_close(torch.tensor(list(result.scores.values())), expected, atol=1e-4, rtol=0)
        assert result.label == labels[int(expected.argmax())]
        assert result.score == pytest.approx(float(expected.max()), abs=1e-4)


def test_single_adapter_classify_equals_mixed_rows(engine: ServingEngine) -> None:
    alone = engine.classify(TINY_BERT_NAME, "c4", TEXTS)
    mixed = engine.classify_batch(TINY_BERT_NAME, [("c3", TEXTS[0])] + [("c4", t) for t in TEXTS])[1:]
    for a, m in zip(alone, mixed, strict=True):
        assert a.label == m.label
        assert a.scores == pytest.approx(m.scores, abs=1e-5)
    info = engine.adapter_info("c4")
    assert info.label_names == tuple(LABELS["c4"]) and info.requests == 2


def test_classify_on_a_causal_lm_is_rejected(engine: ServingEngine) -> None:
    with pytest.raises(ValueError, match="not a sequence classifier"):
        engine.classify("tiny-random-llama", None, ["x"])
