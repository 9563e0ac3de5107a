"""Helpers for the continuous-batching tests: rows whose chunks and tokens are recorded, and a harness
that drives a ContinuousScheduler directly, so arrivals can be tied to the tokens already produced."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from serving_fixtures import TINY_LLAMA_NAME, make_tiny_tokenizer

from lorasp_core.serving import GenerationChunk, GenerationResult, ServingEngine, decode
from lorasp_core.serving.continuous import ContinuousScheduler
from lorasp_core.serving.decode import DecodeRow, decode_batch
from lorasp_core.serving.sampling import TokenChoice

WAIT_S = 120  # a safety net against hanging, never a timing assertion


@dataclass
class Recorded:
    """What one row produced: its chunks, and the error it failed with."""

    chunks: list[GenerationChunk] = field(default_factory=list)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def text(self) -> str:
        return "".join(c.text_delta for c in self.chunks)

    @property
    def token_count(self) -> int:
        return self.chunks[-1].token_count if self.chunks else 0

    @property
    def finish_reason(self) -> str | None:
        return self.chunks[-1].finish_reason if self.chunks else None


def make_row(
    engine: ServingEngine,
    adapter_id: str | None,
    prompt: str,
    *,
    on_chunk: Callable[[GenerationChunk], None] | None = None,
    **options: object,
) -> tuple[DecodeRow, Recorded]:
    """A decode row for tiny-random-llama whose chunks (and failure) are recorded."""
    recorded = Recorded()
    slot = engine.slot_of(adapter_id) if adapter_id else 0
    settings: dict[str, object] = {"max_tokens": 12} | options
    row = DecodeRow(prompt_ids=make_tiny_tokenizer()(prompt)["input_ids"], slot=slot, **settings)  # type: ignore[arg-type]

    def emit(chunk: GenerationChunk) -> None:
        recorded.chunks.append(chunk)
        if on_chunk is not None:
            on_chunk(chunk)
        if chunk.finish_reason is not None:
            recorded.done.set()

    def fail(error: BaseException) -> None:
        recorded.error = error
        recorded.done.set()

    row.emit, row.fail = emit, fail
    return row, recorded


def alone(engine: ServingEngine, row: DecodeRow) -> GenerationResult:
    """The row served by itself through the static decode loop (fresh row: no callbacks)."""
    copy = DecodeRow(
        prompt_ids=row.prompt_ids,
        slot=row.slot,
        max_tokens=row.max_tokens,
        temperature=row.temperature,
        top_p=row.top_p,
        stop=row.stop,
        seed=row.seed,
        ignore_eos=row.ignore_eos,
    )
    (result,) = decode_batch(engine.base_model(TINY_LLAMA_NAME), [copy])
    assert isinstance(result, GenerationResult)
    return result


def scheduler_for(engine: ServingEngine, **bounds: object) -> ContinuousScheduler:
    settings: dict[str, object] = {"max_rows": 8, "max_kv_bytes": None} | bounds
    return ContinuousScheduler(engine.base_model, **settings)  # type: ignore[arg-type]


def wait_all(recorded: list[Recorded]) -> None:
    for item in recorded:
        assert item.done.wait(WAIT_S), "a row never finished"


TokenLog = dict[int, list[int]]


def record_tokens(monkeypatch: pytest.MonkeyPatch) -> TokenLog:
    """Every token each row takes (by id(row)), seen through the per-row step both loops share."""
    log: TokenLog = {}
    seen: list[DecodeRow] = []  # kept alive: a freed row's id could be reused by a later row's
    real_advance = decode._advance

    def advance(row: DecodeRow, state: decode._RowState, choice: TokenChoice, eos_ids: set[int]) -> None:
        if id(row) not in log:
            seen.append(row)
        log.setdefault(id(row), []).append(choice.token_id)
        real_advance(row, state, choice, eos_ids)

    monkeypatch.setattr(decode, "_advance", advance)
    return log


def assert_as_alone(engine: ServingEngine, rows: list[tuple[DecodeRow, Recorded]], tokens: TokenLog) -> None:
    for row, recorded in rows:
        expected = alone(engine, row)
        assert recorded.error is None, recorded.error
        assert tokens[id(row)] == expected.token_ids
        assert (recorded.text, recorded.token_count, recorded.finish_reason) == (
            expected.text,
            expected.completion_tokens,
            expected.finish_reason,
        )
