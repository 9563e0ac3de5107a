"""The tokens/s cost of constrained decoding (response_format json_schema) against plain decoding.

    python -m benchmarks.constrained --model smollm2-135m-instruct --requests 4 --max-tokens 48
    python -m benchmarks.constrained --model tiny-random-llama                  # smoke run

The same prompts run as one batch each way, after one warm-up batch per mode (which also compiles
and caches the grammar): plain sampling, and sampling under a JSON schema. Tokens/s counts the
tokens each row generated; the schema's strings are bounded so every row finishes by its grammar.
On a shared CPU the end-to-end rates are noisy, so the grammar's own share is also measured apart:
the constrained answers' tokens are replayed through a fresh row grammar (mask + consume per token)
and that time is set against the plain decode time per token. Target (issue 11): under 15%.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from lorasp_core.models import load_base_model
from lorasp_core.serving import GenerationRequest, GenerationResult, ResponseFormat, ServingEngine
from lorasp_core.serving.decode import vocab_size
from lorasp_core.serving.grammar import RowGrammar, compile_grammar, response_format_grammar

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
        "genres": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4},
        "rating": {"type": "number"},
        "summary": {"type": "string", "maxLength": 160},
    },
    "required": ["title", "year", "genres", "rating", "summary"],
    "additionalProperties": False,
}
PROMPT = [
    {"role": "user", "content": "Describe a film you like as JSON with title, year, genres, rating, summary."}
]


def _requests(
    model: str, count: int, max_tokens: int, response_format: ResponseFormat | None
) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            model=model,
            messages=PROMPT,
            max_tokens=max_tokens,
            temperature=0.8,
            seed=index,
            response_format=response_format,
        )
        for index in range(count)
    ]


def _tokens_per_second(
    engine: ServingEngine, requests: list[GenerationRequest]
) -> tuple[float, list[GenerationResult]]:
    started = time.perf_counter()
    results = engine.generate_batch(requests)
    elapsed = time.perf_counter() - started
    return sum(result.completion_tokens for result in results) / elapsed, results


def _mask_ms_per_token(
    engine: ServingEngine, model: str, format: ResponseFormat, results: list[GenerationResult]
) -> float:
    """The grammar's own time per generated token: each answer replayed through a fresh row grammar."""
    resident = engine.base_model(model)
    width = vocab_size(resident)
    spec = response_format_grammar(format)
    assert spec is not None
    compiled = compile_grammar(resident.tokenizer, width, spec)
    started, tokens = time.perf_counter(), 0
    for result in results:
        grammar = RowGrammar(compiled, width)
        for token_id in result.token_ids:
            grammar.allowed()
            grammar.consume(token_id)
            tokens += 1
    return 1e3 * (time.perf_counter() - started) / max(tokens, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-random-llama")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    engine = ServingEngine(lambda name: load_base_model(name))
    constrained = ResponseFormat(type="json_schema", schema=SCHEMA, strict=True)
    figures: dict[str, Any] = {"model": args.model, "requests": args.requests, "max_tokens": args.max_tokens}
    try:
        for label, response_format in (("plain", None), ("json_schema", constrained)):
            batch = _requests(args.model, args.requests, args.max_tokens, response_format)
            engine.generate_batch(batch)  # warm-up: first forward, grammar compilation
            runs = [_tokens_per_second(engine, batch) for _ in range(args.repeats)]
            figures[f"{label}_tokens_per_s"] = round(max(rate for rate, _ in runs), 2)
            figures[f"{label}_tokens"] = sum(r.completion_tokens for r in runs[-1][1])
            if response_format is not None:
                figures["mask_ms_per_token"] = round(
                    _mask_ms_per_token(engine, args.model, response_format, runs[-1][1]), 3
                )
    finally:
        engine.close()
    figures["json_schema_cost_pct"] = round(
        100.0 * (1 - figures["json_schema_tokens_per_s"] / figures["plain_tokens_per_s"]), 1
    )
    # A batch step decodes every row at once: per token of one row, the plain step costs 1/rate.
    plain_ms_per_token = 1e3 / figures["plain_tokens_per_s"]
    figures["mask_share_of_plain_pct"] = round(100.0 * figures["mask_ms_per_token"] / plain_ms_per_token, 1)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
