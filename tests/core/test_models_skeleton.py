"""The weightless module tree that job creation checks `target_modules` against."""

from __future__ import annotations

import pytest
import torch

from lorasp_core.config import LoraSPConfig
from lorasp_core.models import load_base_model
from lorasp_core.models.skeleton import check_adapter_targets, model_skeleton


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-bert"])
def test_skeleton_has_the_real_models_modules_and_no_storage(name: str) -> None:
    real = load_base_model(name).model
    skeleton = model_skeleton(name)
    assert [n for n, _ in skeleton.named_modules()] == [n for n, _ in real.named_modules()]
    assert all(p.device == torch.device("meta") for p in skeleton.parameters())


@pytest.mark.parametrize("targets", [None, "all-linear", ("q_proj",), ("model.layers.0.self_attn.v_proj",)])
def test_targets_that_exist_pass(targets: tuple[str, ...] | str | None) -> None:
    check_adapter_targets("tiny-random-llama", LoraSPConfig(target_modules=targets))


def test_a_target_that_matches_nothing_is_named() -> None:
    with pytest.raises(ValueError, match="target_modules not found in the model: nonexistent_proj"):
        check_adapter_targets(
            "tiny-random-llama", LoraSPConfig(target_modules=("q_proj", "nonexistent_proj"))
        )


def test_a_target_that_is_not_linear_is_refused() -> None:
    with pytest.raises(ValueError, match="must be nn.Linear"):
        check_adapter_targets("tiny-random-llama", LoraSPConfig(target_modules=("embed_tokens",)))


def test_modules_to_save_are_checked_too() -> None:
    with pytest.raises(ValueError, match="modules_to_save not found in the model: head"):
        check_adapter_targets("tiny-random-bert", LoraSPConfig(modules_to_save=("head",)))


def test_an_unknown_base_model_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown base model"):
        check_adapter_targets("no-such-model", LoraSPConfig())
