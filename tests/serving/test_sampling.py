"""choose_token and constrained decoding in the engine: penalties, seeds, grammar masks, the cache."""

from __future__ import annotations

import json
from collections.abc import Callable

import jsonschema
import pytest
import torch

from lorasp_core.models import TINY_LLAMA_NAME, make_tiny_tokenizer
from lorasp_core.serving import GenerationRequest, GrammarError, ResponseFormat, ServingEngine
from lorasp_core.serving.grammar import GrammarSpec, compile_grammar, response_format_grammar
from lorasp_core.serving.sampling import SamplingOptions, choose_token, derived_seed, row_sampler

ITEM_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "note": {"type": ["string", "null"], "maxLength": 8},
    },
    "required": ["id", "tags", "note"],
    "additionalProperties": False,
}


def test_penalties_subtract_openais_terms_from_the_logits() -> None:
    tokenizer = make_tiny_tokenizer()
    options = SamplingOptions(presence_penalty=0.5, frequency_penalty=1.0, logprobs=True)
    sampler = row_sampler(options, tokenizer, 261)
    logits = torch.zeros(261)
    logits[10], logits[11] = 3.0, 1.6
    assert choose_token(sampler, logits).token_id == 10  # nothing generated yet: no penalty
    second = choose_token(sampler, logits)  # 3.0 - 1.0 - 0.5 = 1.5 < 1.6
    assert second.token_id == 11
    expected = torch.log_softmax(logits - torch.eye(261)[10] * 1.5, dim=-1)[11]
    assert second.logprob is not None and second.logprob.logprob == pytest.approx(float(expected))
    third = choose_token(sampler, logits)  # 10 at 1.5, 11 at 0.1
    assert third.token_id == 10


def test_derived_seeds_keep_choice_zero_and_differ_for_the_others() -> None:
    assert derived_seed(7, 0) == 7 and derived_seed(None, 3) is None
    seeds = {derived_seed(7, i) for i in range(8)}
    assert len(seeds) == 8 and derived_seed(7, 2) == derived_seed(7, 2)
    assert all(s is not None and 0 <= s < 2**63 for s in seeds)


def test_a_grammar_is_compiled_once_per_tokenizer() -> None:
    tokenizer = make_tiny_tokenizer()
    spec = response_format_grammar(ResponseFormat(type="json_schema", schema=ITEM_SCHEMA, strict=True))
    assert spec is not None
    assert compile_grammar(tokenizer, 261, spec) is compile_grammar(tokenizer, 261, spec)
    assert compile_grammar(make_tiny_tokenizer(), 261, spec) is not compile_grammar(tokenizer, 261, spec)
    with pytest.raises(GrammarError) as refused:
        compile_grammar(tokenizer, 261, GrammarSpec('start: %json {"type": "object", "unevaluatedItems": 1}'))
    assert refused.value.field == "response_format"


def test_sampled_answers_from_a_random_model_always_validate(
    make_engine: Callable[..., ServingEngine],
) -> None:
    engine = make_engine()
    response_format = ResponseFormat(type="json_schema", schema=ITEM_SCHEMA, strict=True)
    requests = [
        GenerationRequest(
            model=TINY_LLAMA_NAME,
            prompt=f"item {seed}",
            max_tokens=120,
            temperature=1.5,
            seed=seed,
            response_format=response_format,
            n=2,
        )
        for seed in range(6)
    ]
    results = engine.generate_batch(requests)
    assert len(results) == 12 and [r.index for r in results[:2]] == [0, 1]
    for result in results:
        assert result.finish_reason == "stop"
        jsonschema.validate(json.loads(result.text), ITEM_SCHEMA)
    assert len({r.text for r in results}) > 6  # sampling, not one forced answer


def test_a_stream_of_n_choices_ends_after_all_of_them(make_engine: Callable[..., ServingEngine]) -> None:
    engine = make_engine()
    request = GenerationRequest(model=TINY_LLAMA_NAME, prompt="x", max_tokens=3, temperature=1.0, seed=1, n=3)
    chunks = list(engine.generate(request))
    finished = sorted(c.index for c in chunks if c.finish_reason is not None)
    assert finished == [0, 1, 2]
