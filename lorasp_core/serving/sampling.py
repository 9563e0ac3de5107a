"""Per-row token choice: penalties, grammar mask, greedy or nucleus sampling, logprob recording.

`choose_token(sampler, logits)` is the one place a decode loop turns a row's logits into its next token;
every loop (the static batch in decode.py, a continuous-batching scheduler) calls it once per row per
step, so a feature added here works in all of them. A `RowSampler` holds what a row carries between
steps (its generator, token counts, grammar position), built once per row by `row_sampler`.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

import torch

from lorasp_core.serving.grammar import GrammarSpec, RowGrammar, compile_grammar, token_bytes
from lorasp_core.serving.types import MAX_SEED, MIN_SEED, TokenLogprob, TopLogprob


@dataclass(frozen=True)
class SamplingOptions:
    """How a row picks its tokens (plain values: it travels inside a DecodeRow)."""

    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: GrammarSpec | None = None


@dataclass(frozen=True)
class TokenChoice:
    token_id: int
    logprob: TokenLogprob | None  # recorded when the row asked for logprobs
    grammar_finished: bool  # the grammar accepts nothing after this token: the row must stop


class RowSampler:
    """One row's sampling state between steps."""

    def __init__(
        self, options: SamplingOptions, tokenizer: Any, vocab_size: int, grammar: RowGrammar | None
    ) -> None:
        self.options = options
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.grammar = grammar
        self.generator = _generator(options)
        penalised = options.presence_penalty != 0 or options.frequency_penalty != 0
        self.counts: torch.Tensor | None = torch.zeros(vocab_size) if penalised else None


def derived_seed(seed: int | None, choice: int) -> int | None:
    """The seed of choice `choice` of a request: the request's own for choice 0, a hash of (seed, choice)
    for the others, so n seeded choices differ from each other yet repeat across identical requests."""
    if seed is None or choice == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{choice}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # 63 bits: inside every seed range


def _generator(options: SamplingOptions) -> torch.Generator | None:
    if options.temperature <= 0:
        return None
    seed = options.seed if options.seed is not None else random.getrandbits(63)
    if not MIN_SEED <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [{MIN_SEED}, {MAX_SEED}], got {seed}")
    return torch.Generator().manual_seed(seed)


def row_sampler(options: SamplingOptions, tokenizer: Any, vocab_size: int) -> RowSampler:
    """The sampler of a new row; raises ValueError for a bad seed, GrammarError for a bad grammar."""
    grammar = None
    if options.grammar is not None:
        grammar = RowGrammar(compile_grammar(tokenizer, vocab_size, options.grammar), vocab_size)
    return RowSampler(options, tokenizer, vocab_size, grammar)


def sample_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """Temperature + nucleus (top-p) sampling with the row's generator; `temperature` must be > 0

    (callers take the greedy argmax themselves at temperature 0).
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always survives).
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def choose_token(sampler: RowSampler, logits: torch.Tensor) -> TokenChoice:
    """The row's next token from its (vocab,) logits of this step; updates the sampler's state."""
    options = sampler.options
    scores = logits.float()
    if sampler.counts is not None:  # OpenAI's formula, over the tokens this row generated
        counts = sampler.counts.to(scores.device)
        scores = scores - counts * options.frequency_penalty - (counts > 0).float() * options.presence_penalty
    if sampler.grammar is not None:
        allowed = sampler.grammar.allowed().to(scores.device)
        scores = scores.masked_fill(~allowed[: scores.shape[-1]], float("-inf"))
    if options.temperature <= 0:
        token_id = int(torch.argmax(scores).item())
    else:
        token_id = sample_token(scores, options.temperature, options.top_p, sampler.generator)
    logprob = _logprob(sampler, scores, token_id) if options.logprobs else None
    if sampler.counts is not None:
        sampler.counts[token_id] += 1
    finished = False
    if sampler.grammar is not None:
        sampler.grammar.consume(token_id)
        finished = sampler.grammar.finished
    return TokenChoice(token_id, logprob, finished)


def _token(sampler: RowSampler, token_id: int) -> tuple[str, list[int]]:
    try:
        raw = token_bytes(sampler.tokenizer, sampler.vocab_size, token_id)
    except ValueError:  # llguidance reads fast tokenizers only: fall back to the decoded text's bytes
        raw = str(sampler.tokenizer.decode([token_id])).encode("utf-8")
    return raw.decode("utf-8", errors="replace"), list(raw)


def _logprob(sampler: RowSampler, scores: torch.Tensor, token_id: int) -> TokenLogprob:
    logprobs = torch.log_softmax(scores, dim=-1)
    top: list[TopLogprob] = []
    if sampler.options.top_logprobs > 0:
        values, ids = torch.topk(logprobs, sampler.options.top_logprobs)
        for value, top_id in zip(values.tolist(), ids.tolist(), strict=True):
            if value == float("-inf"):  # masked out by the grammar: not an alternative
                break
            text, raw = _token(sampler, int(top_id))
            top.append(TopLogprob(int(top_id), text, float(value), raw))
    text, raw = _token(sampler, token_id)
    return TokenLogprob(token_id, text, float(logprobs[token_id].item()), raw, top)
