"""The batched decode loop: many requests, each with its own adapter slot, one forward per step.

Prompts are left-padded; position ids come from the attention mask so a padded row sees the same
positions as it would alone. Rows stop independently (EOS, stop string, max_tokens) and are dropped
from the batch and the KV cache as soon as they finish.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from lorasp_core.serving.grammar import GrammarSpec
from lorasp_core.serving.resident import ResidentModel, model_device
from lorasp_core.serving.sampling import (
    RowSampler,
    SamplingOptions,
    TokenChoice,
    choose_token,
    row_sampler,
    sample_token,
)
from lorasp_core.serving.text_stream import TextStream
from lorasp_core.serving.types import FinishReason, GenerationChunk, GenerationResult, TokenLogprob

__all__ = ["DecodeRow", "decode_batch", "eos_token_ids", "pad_token_id", "sample_token", "vocab_size"]

logger = logging.getLogger("lorasp_core.serving")


@dataclass
class DecodeRow:
    prompt_ids: list[int]
    slot: int
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: GrammarSpec | None = None  # constrained decoding (response_format, forced tool calls)
    index: int = 0  # the request's choice this row generates (n > 1), echoed in its chunks
    emit: Callable[[GenerationChunk], None] | None = None  # called from the decoding thread
    cancelled: Callable[[], bool] | None = None  # polled every step: a reader that went away
    fail: Callable[[BaseException], None] | None = None  # this row (alone) raised; called once

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            grammar=self.grammar,
        )


@dataclass
class _RowState:
    stream: TextStream
    sampler: RowSampler | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    unsent_logprobs: int = 0  # logprobs recorded since the last chunk (a token may emit no text)
    finish_reason: FinishReason | None = None
    error: BaseException | None = None  # the row failed alone; it is out of the batch


def vocab_size(resident: ResidentModel) -> int:
    """Width of the model's logits (may exceed the tokenizer's vocabulary: padded embeddings)."""
    get_output = getattr(resident.model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if isinstance(output, torch.nn.Linear):
        return int(output.out_features)
    config: Any = getattr(resident.model, "config", None)
    return int(config.vocab_size)


def eos_token_ids(resident: ResidentModel) -> set[int]:
    """EOS ids from the generation config (which may list several, e.g. <|im_end|>) and the tokenizer."""
    ids: set[int] = set()
    generation_config = getattr(resident.model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, (list, tuple)):
        ids.update(int(i) for i in configured)
    if getattr(resident.tokenizer, "eos_token_id", None) is not None:
        ids.add(int(resident.tokenizer.eos_token_id))
    return ids


def pad_token_id(resident: ResidentModel) -> int:
    for candidate in (resident.tokenizer.pad_token_id, resident.tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _left_pad(rows: list[DecodeRow], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row.prompt_ids) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.prompt_ids)
        input_ids[i, width - n :] = torch.tensor(row.prompt_ids, dtype=torch.long)
        attention_mask[i, width - n :] = 1
    return input_ids, attention_mask


def decode_batch(resident: ResidentModel, rows: list[DecodeRow]) -> list[GenerationResult | BaseException]:
    """Generate for all rows together; chunks go to each row's `emit` as they are produced.

    The result of a row that failed alone is its exception (also passed to its `fail`); an error of the
    shared forward itself raises, failing the batch.
    """
    if not rows or any(not row.prompt_ids for row in rows):
        raise ValueError("decode_batch needs at least one row, each with a non-empty prompt")
    eos_ids = eos_token_ids(resident)
    width = vocab_size(resident)
    states: list[_RowState] = []
    for row in rows:
        state = _RowState(TextStream(resident.tokenizer, row.stop, resident.tokenizer_lock))
        try:
            state.sampler = row_sampler(row.sampling(), resident.tokenizer, width)
        except Exception as error:
            _fail(row, state, error)
        states.append(state)

    alive = [i for i, state in enumerate(states) if state.error is None]  # original row of each position
    if not alive:
        return [_result(row, state) for row, state in zip(rows, states, strict=True)]
    live_rows = [rows[i] for i in alive]
    device = model_device(resident.model)  # rows are built on the CPU; the forward runs where the model is
    step_ids, attention_mask = (t.to(device) for t in _left_pad(live_rows, pad_token_id(resident)))
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    row_slots = torch.tensor([row.slot for row in live_rows], dtype=torch.long, device=device)
    config = getattr(resident.model, "config", None)
    cache = DynamicCache(config=config)
    with torch.inference_mode():
        while alive:
            with resident.active_slots(row_slots):
                output = resident.model(
                    input_ids=step_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            logits = output.logits[:, -1, :]
            next_tokens: list[int] = []
            keep: list[int] = []
            for position, index in enumerate(alive):
                row, state = rows[index], states[index]
                try:
                    assert state.sampler is not None
                    choice = choose_token(state.sampler, logits[position])
                    _advance(row, state, choice, eos_ids)
                except Exception as error:  # this row's own failure: drop it, keep the others going
                    _fail(row, state, error)
                    continue
                if state.finish_reason is None:
                    keep.append(position)
                    next_tokens.append(choice.token_id)
            if len(keep) < len(alive):
                if not keep:
                    break
                selected = torch.tensor(keep, dtype=torch.long, device=device)
                cache.batch_select_indices(selected)
                attention_mask, row_slots = attention_mask[selected], row_slots[selected]
                position_ids = position_ids[selected]
                alive = [alive[p] for p in keep]
            step_ids = torch.tensor(next_tokens, dtype=torch.long, device=device).view(-1, 1)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(alive), 1))], dim=1)
            position_ids = position_ids[:, -1:] + 1
    return [_result(row, state) for row, state in zip(rows, states, strict=True)]


def _fail(row: DecodeRow, state: _RowState, error: BaseException) -> None:
    state.error = error
    if row.fail is not None:
        try:
            row.fail(error)
        except Exception:  # a broken callback must not take the batch down either
            logger.exception("fail callback of a decode row raised")


def _result(row: DecodeRow, state: _RowState) -> GenerationResult | BaseException:
    if state.error is not None:
        return state.error
    return GenerationResult(
        text=state.stream.text,
        prompt_tokens=len(row.prompt_ids),
        completion_tokens=len(state.token_ids),
        finish_reason=state.finish_reason or "length",
        token_ids=list(state.token_ids),
        index=row.index,
        logprobs=list(state.logprobs) if row.logprobs else None,
    )


def _advance(row: DecodeRow, state: _RowState, choice: TokenChoice, eos_ids: set[int]) -> None:
    """Record one chosen token for a row, decide whether it finished, and emit its chunk."""
    token = choice.token_id
    state.token_ids.append(token)
    if choice.logprob is not None:
        state.logprobs.append(choice.logprob)
        state.unsent_logprobs += 1
    # Under a grammar EOS is only allowed where the document is complete, so it always ends the row.
    ends = token in eos_ids and (not row.ignore_eos or row.grammar is not None)
    if row.cancelled is not None and row.cancelled():
        state.finish_reason = "stop"
        delta = ""
    elif ends:
        state.finish_reason = "stop"
        delta = state.stream.flush()
    else:
        delta = state.stream.add(token)
        if state.stream.stopped or choice.grammar_finished:
            state.finish_reason = "stop"
            delta += state.stream.flush()
        elif len(state.token_ids) >= row.max_tokens:
            state.finish_reason = "length"
            delta += state.stream.flush()
    if row.emit is not None and (delta or state.finish_reason is not None):
        sent = state.logprobs[len(state.logprobs) - state.unsent_logprobs :] if row.logprobs else None
        state.unsent_logprobs = 0
        row.emit(
            GenerationChunk(
                text_delta=delta,
                token_count=len(state.token_ids),
                finish_reason=state.finish_reason,
                prompt_tokens=len(row.prompt_ids),
                index=row.index,
                logprobs=sent,
            )
        )
