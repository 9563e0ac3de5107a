"""LoraSPConfig: defaults, validation with clear messages, JSON round trip, target resolution."""

from __future__ import annotations

import pytest

from lorasp_core.adapters import apply_lorasp
from lorasp_core.config import DEFAULT_TARGET_MODULES, LoraSPConfig


def test_defaults_match_the_issue() -> None:
    config = LoraSPConfig()
    assert (config.r, config.alpha, config.dropout, config.freeze_ratio) == (8, 16.0, 0.0, 0.5)
    assert config.target_modules is None and config.modules_to_save is None
    assert config.scaling == 2.0
    assert DEFAULT_TARGET_MODULES["llama"] == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert DEFAULT_TARGET_MODULES["bert"] == ("query", "key", "value")
    assert "c_attn" in DEFAULT_TARGET_MODULES["gpt2"]


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"r": 0}, "r must be > 0, got 0"),
        ({"r": -3}, "r must be > 0"),
        ({"r": 2.5}, "r must be > 0"),
        ({"alpha": 0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"freeze_ratio": 1.0}, "freeze_ratio"),
        ({"freeze_ratio": -0.1}, "freeze_ratio"),
        ({"freeze_ratio": float("nan")}, "freeze_ratio"),
        ({"mask_seed": -1}, "mask_seed"),
        ({"init_seed": "x"}, "init_seed"),
        ({"target_modules": ()}, "target_modules"),
        ({"target_modules": "q_proj"}, "target_modules"),
        ({"target_modules": ("q_proj", "")}, "target_modules"),
        ({"modules_to_save": ()}, "modules_to_save"),
    ],
)
def test_invalid_values_raise_naming_the_field(kwargs: dict[str, object], field_name: str) -> None:
    with pytest.raises(ValueError, match=field_name):
        LoraSPConfig(**kwargs)  # type: ignore[arg-type]


def test_zero_freeze_ratio_is_plain_lora_and_allowed() -> None:
    assert LoraSPConfig(freeze_ratio=0.0).freeze_ratio == 0.0


@pytest.mark.parametrize(
    "config",
    [
        LoraSPConfig(),
        LoraSPConfig(
            r=4,
            alpha=8,
            dropout=0.1,
            target_modules=("q_proj", "v_proj"),
            freeze_ratio=0.25,
            mask_seed=7,
            init_seed=3,
            modules_to_save=("score",),
        ),
        LoraSPConfig(target_modules="all-linear", freeze_ratio=0.0),
    ],
)
def test_json_round_trip(config: LoraSPConfig) -> None:
    text = config.to_json()
    assert LoraSPConfig.from_json(text) == config
    assert LoraSPConfig.from_dict(config.to_dict()) == config


def test_lists_from_json_become_tuples() -> None:
    config = LoraSPConfig.from_json('{"target_modules": ["q_proj"], "modules_to_save": ["score"]}')
    assert config.target_modules == ("q_proj",)
    assert config.modules_to_save == ("score",)
    hash(config)  # still hashable


def test_from_dict_rejects_unknown_fields_and_bad_json() -> None:
    with pytest.raises(ValueError, match="rank"):
        LoraSPConfig.from_dict({"rank": 4})
    with pytest.raises(ValueError, match="invalid"):
        LoraSPConfig.from_json("{not json")


def test_unknown_target_names_raise_at_apply_time_naming_them(tiny_llama: object) -> None:
    config = LoraSPConfig(target_modules=("q_proj", "qq_proj", "nope"))
    with pytest.raises(ValueError, match="qq_proj, nope"):
        apply_lorasp(tiny_llama, config)  # type: ignore[arg-type]


def test_non_linear_target_is_rejected(tiny_llama: object) -> None:
    with pytest.raises(ValueError, match="nn.Linear"):
        apply_lorasp(tiny_llama, LoraSPConfig(target_modules=("input_layernorm",)))  # type: ignore[arg-type]


def test_unknown_modules_to_save_raise(tiny_bert: object) -> None:
    with pytest.raises(ValueError, match="headless"):
        apply_lorasp(tiny_bert, LoraSPConfig(modules_to_save=("headless",)))  # type: ignore[arg-type]
