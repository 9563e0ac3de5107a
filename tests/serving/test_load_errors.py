"""Broken or incompatible adapters raise AdapterLoadError naming adapter + file; the engine is unchanged."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from serving_fixtures import TINY_BERT_NAME, TINY_LLAMA_NAME, make_bert_adapter, make_llama_adapter

from lorasp_core.serving import AdapterLoadError, GenerationRequest, ServingEngine

EngineFactory = Callable[..., ServingEngine]
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


@pytest.fixture(scope="module")
def good(adapter_dir: Path) -> Path:
    make_llama_adapter(adapter_dir / "good", seed=1)
    return adapter_dir / "good"


@pytest.fixture
def broken(good: Path, tmp_path: Path) -> Path:
    """A fresh copy of the good adapter for each test to damage."""
    return Path(shutil.copytree(good, tmp_path / "broken"))


def edit_config(directory: Path, **changes: object) -> None:
    config = json.loads((directory / CONFIG).read_text())
    config.update(changes)
    (directory / CONFIG).write_text(json.dumps(config))


def edit_weights(directory: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(str(directory / WEIGHTS))
    edit(tensors)
    save_file(tensors, str(directory / WEIGHTS))


def corrupt(directory: Path) -> None:
    (directory / WEIGHTS).write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00garbage, not safetensors" * 3)


def shape_mismatch(directory: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        for key in [k for k in tensors if k.endswith("q_proj.lora_A.weight")]:
            tensors[key] = torch.zeros(4, 32)  # the base q_proj takes 64 inputs

    edit_weights(directory, edit)


def unknown_module(directory: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        for key in [k for k in tensors if "q_proj" in k]:
            tensors[key.replace("q_proj", "nonexistent_proj")] = tensors.pop(key)

    edit_weights(directory, edit)


CASES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (damage, file named in the message, problem named in the message)
    "corrupt safetensors": (corrupt, WEIGHTS, "cannot read safetensors"),
    "missing weights": (lambda d: (d / WEIGHTS).unlink(), WEIGHTS, "missing file"),
    "missing config": (lambda d: (d / CONFIG).unlink(), CONFIG, "missing file"),
    "bad json": (lambda d: (d / CONFIG).write_text("{not json"), CONFIG, "not valid JSON"),
    "bad lorasp.json": (lambda d: (d / "lorasp.json").write_text("[1,"), "lorasp.json", "not valid JSON"),
    "wrong base model": (lambda d: edit_config(d, base_model_name_or_path="gpt2"), CONFIG, "trained on base"),
    "wrong task": (lambda d: edit_config(d, task_type="SEQ_CLS"), CONFIG, "adapter task is seq-cls"),
    "dora": (lambda d: edit_config(d, use_dora=True), CONFIG, "DoRA"),
    "rank mismatch": (lambda d: edit_config(d, r=8), WEIGHTS, "config says r=8"),
    "shape mismatch": (shape_mismatch, WEIGHTS, "do not fit the base layer"),
    "unknown target module": (unknown_module, WEIGHTS, "not found in"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_adapter_is_rejected_and_engine_keeps_serving(
    case: str, make_engine: EngineFactory, good: Path, broken: Path
) -> None:
    damage, file, problem = CASES[case]
    engine = make_engine(max_adapters=2)
    engine.load_adapter("good", good, TINY_LLAMA_NAME)
    request = GenerationRequest(model=TINY_LLAMA_NAME, adapter_id="good", prompt="abc", max_tokens=3)
    expected = engine.generate_batch([request])[0].token_ids
    before = [(a.adapter_id, a.slot) for a in engine.loaded_adapters()]
    free_before = list(engine.base_model(TINY_LLAMA_NAME).free_slots)

    damage(broken)
    with pytest.raises(AdapterLoadError) as caught:
        engine.load_adapter("bad", broken, TINY_LLAMA_NAME)
    message = str(caught.value)
    assert "'bad'" in message and file in message and problem in message, message

    assert [(a.adapter_id, a.slot) for a in engine.loaded_adapters()] == before
    assert engine.base_model(TINY_LLAMA_NAME).free_slots == free_before
    assert engine.generate_batch([request])[0].token_ids == expected


def test_rank_over_max_rank(make_engine: EngineFactory, adapter_dir: Path) -> None:
    make_llama_adapter(adapter_dir / "r16", seed=2, r=16)
    engine = make_engine(max_rank=8)
    with pytest.raises(AdapterLoadError, match="rank 16 exceeds this server's max_rank 8"):
        engine.load_adapter("big", adapter_dir / "r16", TINY_LLAMA_NAME)
    assert engine.loaded_adapters() == []


def test_missing_directory(make_engine: EngineFactory, tmp_path: Path) -> None:
    with pytest.raises(AdapterLoadError, match="does not exist"):
        make_engine().load_adapter("ghost", tmp_path / "nope", TINY_LLAMA_NAME)


def test_classifier_head_with_wrong_hidden_size(make_engine: EngineFactory, adapter_dir: Path) -> None:
    directory = adapter_dir / "bad_head"
    make_bert_adapter(directory, seed=3, labels=["x", "y", "z"])
    edit_weights(directory, lambda t: t.update({"base_model.model.classifier.weight": torch.zeros(3, 32)}))
    engine = make_engine()
    with pytest.raises(AdapterLoadError, match=r"classifier.weight has shape \(3, 32\)"):
        engine.load_adapter("bad_head", directory, TINY_BERT_NAME)
    assert engine.classify(TINY_BERT_NAME, None, ["still serving"])[0].label in {"LABEL_0", "LABEL_1"}


def test_label_names_must_match_head(make_engine: EngineFactory, adapter_dir: Path) -> None:
    directory = adapter_dir / "bad_labels"
    make_bert_adapter(directory, seed=3, labels=["x", "y", "z"])
    (directory / "lorasp.json").write_text(json.dumps({"label_names": ["only", "two"]}))
    with pytest.raises(AdapterLoadError, match="2 label_names"):
        make_engine().load_adapter("bad_labels", directory, TINY_BERT_NAME)
