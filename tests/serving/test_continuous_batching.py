"""Continuous batching: rows that join a running batch mid-decode, leave early (stop, EOS, max_tokens)
or are cancelled produce exactly what each request produces served alone.

Arrival is deterministic: a newcomer is submitted from inside a running row's k-th chunk (the decoding
thread), so it joins at the next step boundary while that row is mid-decode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from continuous_fixtures import (
    Recorded,
    alone,
    assert_as_alone,
    make_row,
    record_tokens,
    scheduler_for,
    wait_all,
)
from serving_fixtures import TINY_LLAMA_NAME, make_llama_adapter

from lorasp_core.serving import GenerationChunk, GenerationRequest, ServingEngine, running_batch
from lorasp_core.serving import decode as decode_module
from lorasp_core.serving.continuous import ContinuousScheduler
from lorasp_core.serving.decode import DecodeRow

EngineFactory = Callable[..., ServingEngine]
LONG = "The quick brown fox jumps over the lazy dog"


@pytest.fixture
def engine(make_engine: EngineFactory, adapter_dir: Path) -> ServingEngine:
    engine = make_engine(max_adapters=4)
    make_llama_adapter(adapter_dir / "c1", seed=11, r=4)
    make_llama_adapter(adapter_dir / "c2", seed=12, r=8, targets=["q_proj", "v_proj", "gate_proj"])
    engine.load_adapter("c1", adapter_dir / "c1", TINY_LLAMA_NAME)
    engine.load_adapter("c2", adapter_dir / "c2", TINY_LLAMA_NAME)
    return engine


@pytest.fixture
def scheduler(engine: ServingEngine) -> Iterator[ContinuousScheduler]:
    scheduler = scheduler_for(engine)
    yield scheduler
    scheduler.close()


def submit_at(
    scheduler: ContinuousScheduler, k: int, later: list[DecodeRow]
) -> Callable[[GenerationChunk], None]:
    """An on_chunk callback: once the row has k tokens, submit `later` (a chunk may carry several
    tokens: text held back as an incomplete UTF-8 sequence comes out with a later token)."""
    fired = False

    def on_chunk(chunk: GenerationChunk) -> None:
        nonlocal fired
        if chunk.token_count >= k and not fired:
            fired = True
            for row in later:
                scheduler.submit(TINY_LLAMA_NAME, row)

    return on_chunk


def record_step_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of every decode step the running batches take."""
    rows: list[int] = []
    real_step = running_batch.RunningBatch.step

    def step(self: running_batch.RunningBatch) -> None:
        rows.append(len(self.rows))
        real_step(self)

    monkeypatch.setattr(running_batch.RunningBatch, "step", step)
    return rows


def test_rows_joining_mid_decode_equal_serving_alone(
    engine: ServingEngine, scheduler: ContinuousScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = record_tokens(monkeypatch)
    # Newcomers: other adapters, greedy and seeded sampling, prompts shorter and longer than the
    # running row's cache at the moment they join (both sides of the merge get left-padded).
    second = [
        make_row(engine, "c2", LONG + LONG, max_tokens=10),
        make_row(engine, None, "hi", temperature=1.0, seed=7, max_tokens=14),
    ]
    third = [make_row(engine, "c1", "x", temperature=0.8, top_p=0.9, seed=3, max_tokens=9)]
    step_rows = record_step_rows(monkeypatch)
    first = make_row(
        engine,
        "c1",
        "Hello there",
        max_tokens=24,
        ignore_eos=True,
        on_chunk=submit_at(scheduler, 3, [r for r, _ in second]),
    )
    # The third group joins later, into a batch that has already merged once.
    trigger = make_row(
        engine,
        "c2",
        "abc",
        max_tokens=16,
        ignore_eos=True,
        on_chunk=submit_at(scheduler, 8, [r for r, _ in third]),
    )
    with scheduler.paused():
        scheduler.submit(TINY_LLAMA_NAME, first[0])
        scheduler.submit(TINY_LLAMA_NAME, trigger[0])
    everyone = [first, trigger, *second, *third]
    wait_all([recorded for _, recorded in everyone])
    assert scheduler.batch_sizes == [2, 2, 1]  # three admissions: the later two joined a running batch
    assert max(step_rows) >= 4  # the first rows decoded alongside the newcomers, in one forward
    assert_as_alone(engine, everyone, tokens)
    assert (
        tokens[id(first[0])]
        != alone(engine, make_row(engine, None, "Hello there", max_tokens=16)[0]).token_ids
    )


def test_rows_leaving_early_leave_the_others_as_alone(
    engine: ServingEngine, scheduler: ContinuousScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = record_tokens(monkeypatch)
    probe = alone(engine, make_row(engine, "c1", LONG, max_tokens=12)[0])
    stop_text = probe.text[2:4]
    assert len(stop_text) == 2
    eos_probe = alone(engine, make_row(engine, "c2", "abc", max_tokens=12)[0])
    # The EOS row: make its own 4th token an end-of-sequence id (for the alone reference too).
    eos_id = eos_probe.token_ids[3]
    monkeypatch.setattr(decode_module, "eos_token_ids", lambda resident: {eos_id})
    late = make_row(engine, "c2", "a late one", max_tokens=6, temperature=1.0, seed=1)
    rows = [
        make_row(engine, "c1", LONG, max_tokens=12, stop=[stop_text]),  # the longest prompt leaves first
        make_row(engine, "c2", "abc", max_tokens=12),  # leaves at its EOS
        make_row(engine, None, "hi", max_tokens=1),  # leaves after its prefill token
        # Runs to the end; a late row joins the batch its neighbours left (its cache trimmed).
        make_row(
            engine, "c1", "x", max_tokens=12, ignore_eos=True, on_chunk=submit_at(scheduler, 6, [late[0]])
        ),
    ]
    with scheduler.paused():
        for row, _ in rows:
            scheduler.submit(TINY_LLAMA_NAME, row)
    wait_all([recorded for _, recorded in [*rows, late]])
    assert rows[0][1].finish_reason == "stop" and stop_text not in rows[0][1].text
    assert rows[1][1].finish_reason == "stop" and rows[1][1].token_count <= 4
    assert (rows[2][1].token_count, rows[2][1].finish_reason) == (1, "length")
    assert rows[3][1].token_count == 12
    assert_as_alone(engine, [*rows, late], tokens)


def test_a_cancelled_row_leaves_mid_batch_and_the_others_are_unchanged(
    engine: ServingEngine, scheduler: ContinuousScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = record_tokens(monkeypatch)
    cancelled = {"now": False}

    def cancel_at_three(chunk: GenerationChunk) -> None:
        cancelled["now"] = cancelled["now"] or chunk.token_count >= 3

    victim, victim_record = make_row(
        engine, "c2", LONG, max_tokens=12, ignore_eos=True, on_chunk=cancel_at_three
    )
    victim.cancelled = lambda: cancelled["now"]
    others = [make_row(engine, "c1", "Hello", max_tokens=10), make_row(engine, None, "hi", max_tokens=10)]
    with scheduler.paused():
        for row, _ in [(victim, victim_record), *others]:
            scheduler.submit(TINY_LLAMA_NAME, row)
    wait_all([victim_record] + [recorded for _, recorded in others])
    assert victim_record.finish_reason == "stop" and 4 <= victim_record.token_count < 12
    full = alone(engine, victim).token_ids
    assert tokens[id(victim)] == full[: victim_record.token_count]  # decoded as alone until it left
    assert_as_alone(engine, others, tokens)


def test_engine_generate_streams_equal_generate_batch_with_late_arrivals(engine: ServingEngine) -> None:
    """Through the engine (continuous by default): a request started while another streams."""
    assert engine.batching == "continuous"
    long = GenerationRequest(
        model=TINY_LLAMA_NAME, adapter_id="c1", prompt=LONG, max_tokens=24, ignore_eos=True
    )
    short = GenerationRequest(
        model=TINY_LLAMA_NAME, adapter_id="c2", prompt="hi", max_tokens=6, seed=5, temperature=1.0
    )
    expected = [engine.generate_batch([r])[0].text for r in (long, short)]
    stream = engine.generate(long)
    first = next(stream)
    late = engine.generate(short).text()
    assert first.text_delta + stream.text() == expected[0]
    assert late == expected[1]
    assert engine.adapter_info("c1").requests == 2 and engine.adapter_info("c2").requests == 2


def test_failed_rows_are_told_once(engine: ServingEngine, scheduler: ContinuousScheduler) -> None:
    bad, bad_record = make_row(engine, None, "x", temperature=1.0, seed=2**64)
    good, good_record = make_row(engine, "c1", "Hello", max_tokens=5)
    failures: list[BaseException] = []
    recorded_fail = bad.fail
    assert recorded_fail is not None

    def fail(error: BaseException) -> None:
        failures.append(error)
        recorded_fail(error)

    bad.fail = fail
    scheduler.submit(TINY_LLAMA_NAME, bad)
    scheduler.submit(TINY_LLAMA_NAME, good)
    wait_all([bad_record, good_record])
    assert len(failures) == 1 and isinstance(failures[0], ValueError) and "seed" in str(failures[0])
    assert good_record.error is None and good_record.token_count == 5
    assert isinstance(bad_record, Recorded)


def test_a_failing_prefill_fails_its_newcomers_alone(
    engine: ServingEngine, scheduler: ContinuousScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = record_tokens(monkeypatch)
    poison, poison_record = make_row(engine, "c1", "p" * 37, max_tokens=5)
    real_forward = running_batch.RunningBatch._forward

    def forward(self: running_batch.RunningBatch, ids, mask, slots, cache):  # type: ignore[no-untyped-def]
        if ids.shape == (1, len(poison.prompt_ids)):
            raise RuntimeError("prefill failed")
        return real_forward(self, ids, mask, slots, cache)

    monkeypatch.setattr(running_batch.RunningBatch, "_forward", forward)
    running = make_row(
        engine, "c2", "Hello", max_tokens=12, ignore_eos=True, on_chunk=submit_at(scheduler, 3, [poison])
    )
    scheduler.submit(TINY_LLAMA_NAME, running[0])
    wait_all([running[1], poison_record])
    assert isinstance(poison_record.error, RuntimeError) and poison_record.chunks == []
    later = make_row(engine, None, "after", max_tokens=4)
    scheduler.submit(TINY_LLAMA_NAME, later[0])
    wait_all([later[1]])
    assert_as_alone(engine, [running, later], tokens)
