"""The batched decode loop: many requests, each with its own adapter slot, one forward per step.

Prompts are left-padded; position ids come from the attention mask so a padded row sees the same
positions as it would alone. Rows stop independently (EOS, stop string, max_tokens) and are dropped
from the batch and the KV cache as soon as they finish.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from lorasp_core.serving.resident import ResidentModel, model_device
from lorasp_core.serving.text_stream import TextStream
from lorasp_core.serving.types import MAX_SEED, MIN_SEED, FinishReason, GenerationChunk, GenerationResult

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
    emit: Callable[[GenerationChunk], None] | None = None  # called from the decoding thread
    cancelled: Callable[[], bool] | None = None  # polled every step: a reader that went away
    fail: Callable[[BaseException], None] | None = None  # this row (alone) raised; called once


@dataclass
class _RowState:
    stream: TextStream
    generator: torch.Generator | None
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    error: BaseException | None = None  # the row failed alone; it is out of the batch


def _generator(row: DecodeRow) -> torch.Generator | None:
    if row.temperature <= 0:
        return None
    seed = row.seed if row.seed is not None else random.getrandbits(63)
    if not MIN_SEED <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [{MIN_SEED}, {MAX_SEED}], got {seed}")
    return torch.Generator().manual_seed(seed)


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
    states: list[_RowState] = []
    for row in rows:
        state = _RowState(TextStream(resident.tokenizer, row.stop, resident.tokenizer_lock), None)
        try:
            state.generator = _generator(row)
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
            greedy = torch.argmax(logits, dim=-1).tolist()
            next_tokens: list[int] = []
            keep: list[int] = []
            for position, index in enumerate(alive):
                row, state = rows[index], states[index]
                try:
                    if row.temperature <= 0:
                        token = int(greedy[position])
                    else:
                        token = sample_token(logits[position], row.temperature, row.top_p, state.generator)
                    _advance(row, state, token, eos_ids)
                except Exception as error:  # this row's own failure: drop it, keep the others going
                    _fail(row, state, error)
                    continue
                if state.finish_reason is None:
                    keep.append(position)
                    next_tokens.append(token)
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
    )


def _advance(row: DecodeRow, state: _RowState, token: int, eos_ids: set[int]) -> None:
    """Record one sampled token for a row, decide whether it finished, and emit its chunk."""
    state.token_ids.append(token)
    if row.cancelled is not None and row.cancelled():
        state.finish_reason = "stop"
        delta = ""
    elif token in eos_ids and not row.ignore_eos:
        state.finish_reason = "stop"
        delta = state.stream.flush()
    else:
        delta = state.stream.add(token)
        if state.stream.stopped:
            state.finish_reason = "stop"
        elif len(state.token_ids) >= row.max_tokens:
            state.finish_reason = "length"
            delta += state.stream.flush()
    if row.emit is not None and (delta or state.finish_reason is not None):
        row.emit(
            GenerationChunk(
                text_delta=delta,
                token_count=len(state.token_ids),
                finish_reason=state.finish_reason,
                prompt_tokens=len(row.prompt_ids),
            )
        )
