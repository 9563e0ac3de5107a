"""The wire format: engine dataclasses cross generically by their fields, errors as their own types."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from api.inference_tier import wire
from lorasp_core.models import ModelUnavailableError
from lorasp_core.serving import (
    AdapterCacheFullError,
    AdapterInfo,
    AdapterLoadError,
    AdapterQuotaError,
    BatchingFigures,
    ChatTemplateError,
    ClassificationResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    GrammarError,
    ServingOverloadedError,
    ToolsUnsupportedError,
    UnknownAdapterError,
)


def through_json(value: object) -> object:
    return json.loads(json.dumps(wire.to_wire(value)))


@pytest.mark.parametrize(
    "value",
    [
        BatchingFigures(mode="static", running_rows=3, waiting_requests=1, kv_cache_bytes=4096),
        GenerationRequest(
            model="m",
            adapter_id="ft:m:x",
            messages=[{"role": "user", "content": "hi ünïcode"}],
            max_tokens=7,
            temperature=0.5,
            top_p=0.9,
            stop=["\n"],
            seed=2**64 - 1,
            ignore_eos=True,
        ),
        GenerationRequest(model="m", prompt="once upon"),
        GenerationChunk(text_delta="ab", token_count=3, finish_reason="length", prompt_tokens=5),
        GenerationResult(
            text="t", prompt_tokens=1, completion_tokens=2, finish_reason="stop", token_ids=[4, 5]
        ),
        ClassificationResult(label="pos", score=0.75, scores={"pos": 0.75, "neg": 0.25}),
        AdapterInfo(
            adapter_id="ft:m:x",
            base_model="m",
            path="/p",
            task="seq-cls",
            rank=4,
            bytes=10,
            slot=1,
            pinned=True,
            hits=2,
            last_used=1.5,
            loaded_at=1.0,
            load_ms=3.0,
            loads=1,
            requests=2,
            tokens_generated=9,
            mean_latency_ms=None,
            label_names=("a", "b"),
        ),
    ],
)
def test_engine_values_round_trip_through_json(value: object) -> None:
    assert wire.from_wire(type(value), through_json(value)) == value


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float


@dataclass(frozen=True)
class ChunkWithNewFields:
    """What a chunk may grow into: nested dataclasses, literals and defaults, unknown to wire.py."""

    text_delta: str
    token_count: int
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: list[TopLogprob] = field(default_factory=list)
    index: int = 0


def test_fields_wire_py_does_not_know_cross_generically() -> None:
    chunk = ChunkWithNewFields("x", 1, "stop", [TopLogprob("x", -0.5), TopLogprob("y", -1.25)], index=2)
    assert wire.from_wire(ChunkWithNewFields, through_json(chunk)) == chunk


def test_keys_a_receiver_does_not_know_are_dropped_and_missing_ones_default() -> None:
    data = {"text_delta": "x", "token_count": 1, "logprobs_from_a_newer_process": [1, 2]}
    assert wire.from_wire(GenerationChunk, data) == GenerationChunk("x", 1)


def test_a_malformed_value_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        wire.from_wire(GenerationChunk, {"text_delta": "x", "token_count": "many"})


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnknownAdapterError("adapter 'a' is not loaded"), 404),
        (AdapterLoadError("a", "adapter_config.json", "r is 0"), 400),
        (AdapterQuotaError("tenant-1", "pinned", 2), 429),
        (AdapterCacheFullError("every slot is pinned"), 503),
        (ChatTemplateError("does not parse"), 400),
        (ModelUnavailableError("base model 'm' is not registered"), 503),
        (ValueError("max_tokens must be >= 1, got 0"), 400),
        (ServingOverloadedError(4, 4, 2.0), 503),
        (GrammarError("response_format", "unsupported keyword 'patternProperties'"), 400),
        (ToolsUnsupportedError("the chat template does not render tools"), 400),
    ],
)
def test_engine_errors_come_back_as_their_own_types(error: Exception, status: int) -> None:
    payload = json.loads(json.dumps(wire.error_to_wire(error)))
    back = wire.error_from_wire(payload)
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert vars(back) == vars(error)  # typed fields (adapter_id, kind, limit, ...) survive
    assert wire.error_kind(error).status == status


def test_an_unexpected_error_is_an_internal_one() -> None:
    back = wire.error_from_wire(wire.error_to_wire(KeyError("boom")))
    assert isinstance(back, wire.InferenceProcessError)
    assert isinstance(wire.error_from_wire("not a dict"), wire.InferenceProcessError)
