"""SmolLM2 from its packaged GGUF: dequantised once into the cache, then read back; it must still chat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lorasp_core.data import TOOLS_UNSUPPORTED, tool_support_problem
from lorasp_core.models import LoadedModel, load_base_model, load_base_tokenizer
from lorasp_core.models.gguf_cache import CACHE_MARKER_FILE

pytestmark = pytest.mark.slow

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def first_load(cache_root: Path) -> LoadedModel:
    return load_base_model(NAME, cache_dir=cache_root)


def test_first_load_writes_a_complete_cache(first_load: LoadedModel, cache_root: Path) -> None:
    cache_path = cache_root / NAME
    names = {path.name for path in cache_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", CACHE_MARKER_FILE} <= names
    assert not [path for path in cache_root.iterdir() if ".tmp-" in path.name]  # staging dir moved away
    config = json.loads((cache_path / "config.json").read_text())
    assert "quantization_config" not in config  # a plain float32 checkpoint, not a GGUF one
    marker = json.loads((cache_path / CACHE_MARKER_FILE).read_text())
    assert marker["source_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"

    model, tokenizer = first_load.model, first_load.tokenizer
    assert first_load.task == "causal-lm" and model.config.name_or_path == NAME
    assert not model.training and model.dtype == torch.float32
    assert all(type(module).__name__ != "GgufLinear" for module in model.modules())
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.pad_token is not None and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.model_max_length == model.config.max_position_embeddings


def test_second_load_reads_the_cache_and_matches(first_load: LoadedModel, cache_root: Path) -> None:
    weights_file = cache_root / NAME / "model.safetensors"
    written_at = weights_file.stat().st_mtime_ns
    second = load_base_model(NAME, cache_dir=cache_root)
    assert weights_file.stat().st_mtime_ns == written_at  # not rebuilt
    first_state, second_state = first_load.model.state_dict(), second.model.state_dict()
    assert first_state.keys() == second_state.keys()
    for key, tensor in first_state.items():
        assert torch.equal(tensor, second_state[key]), key
    assert second.tokenizer.get_vocab() == first_load.tokenizer.get_vocab()


def test_chat_generation_is_sensible(first_load: LoadedModel) -> None:
    tokenizer, model = first_load.tokenizer, first_load.model
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_tokenizer_alone_matches_and_its_template_cannot_render_tools(
    first_load: LoadedModel, cache_root: Path, tmp_path: Path
) -> None:
    from_cache = load_base_tokenizer(NAME, cache_dir=cache_root)
    from_gguf = load_base_tokenizer(NAME, cache_dir=tmp_path)  # no cache there: read from the GGUF
    assert not (tmp_path / NAME).exists()  # the tokenizer alone builds no cache
    for tokenizer in (from_cache, from_gguf):
        assert tokenizer.chat_template == first_load.tokenizer.chat_template
        assert tokenizer("Hello there")["input_ids"] == first_load.tokenizer("Hello there")["input_ids"]
    # the packaged SmolLM2 template ignores tools: tool-calling files are refused for it
    problem = tool_support_problem(from_cache)
    assert problem is not None and problem.startswith(TOOLS_UNSUPPORTED)
