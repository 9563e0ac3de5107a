"""train() as 2 gloo ranks on CPU: the same adapter as 1 process, cancel reaches every rank, resume, a
killed rank fails the others.

Ranks are spawned with torch.multiprocessing; they rendezvous through a TCPStore this process serves
(port 0: no port is guessed). Each rank saves its adapter tensors for the test to compare.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lorasp_core.adapters import apply_lorasp
from lorasp_core.config import LoraSPConfig
from lorasp_core.data import ChatExample, Example
from lorasp_core.distributed import RankGroupError, init_rank
from lorasp_core.models import make_tiny_tokenizer, tiny_random_llama
from lorasp_core.trainer import ProgressEvent, TrainCallback, TrainConfig, TrainResult, train

TOKENIZER = make_tiny_tokenizer()
HOST = "127.0.0.1"
# Float tolerance of 2 ranks vs 1 process: the gradients are the same sums taken in another order
# (two half batches, each padded to its own longest row, then all_reduce), so they differ by float32
# rounding only; after 8 AdamW steps the adapter entries differed by at most 8.2e-8 here (2-core
# Xeon). 1e-6 leaves room for other CPUs' kernels while any real error (a wrong share, a gradient
# averaged instead of summed, a skipped example) moves entries by ~1e-3 or more.
ATOL = 1e-6


def chat_data(n: int = 13) -> list[Example]:
    # 13 examples, batch 4: the last micro-batch holds 1 example, so rank 1's share of it is empty
    return [
        ChatExample(
            messages=(
                {"role": "user", "content": f"add {i} and {i % 5}" + "!" * (i % 4)},
                {"role": "assistant", "content": f"{i + i % 5}"},
            )
        )
        for i in range(n)
    ]


def config(**overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "task": "causal-lm",
        "epochs": 2,
        "batch_size": 4,
        "learning_rate": 1e-2,
        "max_length": 64,
        "device": "cpu",
        "mixed_precision": "no",
        "batching": "padded",
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def model() -> nn.Module:
    return apply_lorasp(tiny_random_llama(), LoraSPConfig(r=4, dropout=0.0))


def adapter_tensors(trained: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in trained.state_dict().items() if "lora_" in name}


class StopAfter(TrainCallback):
    """Rank 0's cancel: asks to stop once `steps` steps are done."""

    def __init__(self, steps: int) -> None:
        self.steps, self.done = steps, 0

    def on_progress(self, event: ProgressEvent) -> None:
        self.done = event.step

    def should_stop(self) -> bool:
        return self.done >= self.steps


class WaitForKill(TrainCallback):
    """Rank 0 reports step 1, then waits until the test has killed rank 1 (no timing involved)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_progress(self, event: ProgressEvent) -> None:
        if event.step == 1:
            (self.out / "step-1").touch()
            while not (self.out / "killed").exists():
                time.sleep(0.05)


def run_rank(rank: int, world_size: int, port: int, train_config: TrainConfig, out: Path, mode: str) -> None:
    """One rank (spawned): trains, then saves its adapter tensors and result to `out`."""
    torch.set_num_threads(1)
    store = dist.TCPStore(HOST, port, world_size, is_master=False, timeout=dist.constants.default_pg_timeout)
    callbacks: list[TrainCallback] = []
    if mode == "stop":
        callbacks = [StopAfter(2)]
    elif mode == "kill":
        callbacks = [WaitForKill(out)]
    with init_rank(rank, world_size, store, torch.device("cpu"), timeout_seconds=60):
        trained = model()
        result = train(train_config, trained, TOKENIZER, chat_data(), callbacks=callbacks)
    torch.save((adapter_tensors(trained), result), out / f"rank-{rank}.pt")


def spawn_ranks(train_config: TrainConfig, out: Path, mode: str = "") -> mp.ProcessContext:
    store = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False)
    out.mkdir(parents=True, exist_ok=True)
    context = mp.start_processes(
        run_rank,
        args=(train_config.processes, store.port, train_config, out, mode),
        nprocs=train_config.processes,
        join=False,
        start_method="spawn",
    )
    context.store = store  # type: ignore[attr-defined]  # kept alive until the ranks are done
    return context


def run_two_ranks(
    train_config: TrainConfig, out: Path, mode: str = ""
) -> list[tuple[dict[str, torch.Tensor], TrainResult]]:
    context = spawn_ranks(replace(train_config, processes=2), out, mode)
    while not context.join():
        pass
    return [torch.load(out / f"rank-{rank}.pt", weights_only=False) for rank in range(2)]


def one_process(train_config: TrainConfig) -> tuple[dict[str, torch.Tensor], TrainResult]:
    trained = model()
    result = train(train_config, trained, TOKENIZER, chat_data())
    return adapter_tensors(trained), result


def assert_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=ATOL, msg=name)


@pytest.fixture(scope="module")
def straight_two_ranks(
    tmp_path_factory: pytest.TempPathFactory,
) -> list[tuple[dict[str, torch.Tensor], TrainResult]]:
    """An uninterrupted 2-rank run of config() (spawning ranks is the slow part: done once)."""
    return run_two_ranks(config(), tmp_path_factory.mktemp("straight"))


def test_two_ranks_train_the_adapter_of_one_process_with_the_same_global_batch(
    straight_two_ranks: list[tuple[dict[str, torch.Tensor], TrainResult]],
) -> None:
    (rank0, result0), (rank1, result1) = straight_two_ranks
    expected, single = one_process(config())
    assert result0.steps == single.steps == 8
    assert result0.trained_tokens == result1.trained_tokens == single.trained_tokens  # every example once
    assert result0.train_loss == pytest.approx(single.train_loss, rel=1e-5)
    for name in rank0:  # identical summed gradients, identical optimizer steps
        assert torch.equal(rank0[name], rank1[name]), name
    assert_close(rank0, expected)
    assert any(not torch.equal(tensor, model().state_dict()[name]) for name, tensor in rank0.items())


def test_cancel_on_rank_0_stops_every_rank_and_two_ranks_resume_from_its_checkpoint(
    tmp_path: Path, straight_two_ranks: list[tuple[dict[str, torch.Tensor], TrainResult]]
) -> None:
    base = config(checkpoint_dir=str(tmp_path / "checkpoints"))
    (_, stopped0), (_, stopped1) = run_two_ranks(base, tmp_path / "stopped", mode="stop")
    assert stopped0.cancelled and stopped1.cancelled  # rank 1 has no callbacks: rank 0's flag reached it
    assert stopped0.steps == stopped1.steps == 2
    assert stopped0.last_checkpoint is not None and stopped1.last_checkpoint is None  # rank 0 alone writes
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2"]

    resumed = replace(base, resume_from=str(stopped0.last_checkpoint))
    (resumed0, resumed_result), _ = run_two_ranks(resumed, tmp_path / "resumed")
    (straight0, straight_result), _ = straight_two_ranks
    assert resumed_result.steps == straight_result.steps == 8
    assert resumed_result.trained_tokens == straight_result.trained_tokens
    for name in straight0:  # the same ranks, the same sums: bit-identical
        assert torch.equal(resumed0[name], straight0[name]), name


def test_a_killed_rank_makes_the_other_fail_instead_of_hanging(tmp_path: Path) -> None:
    context = spawn_ranks(replace(config(epochs=3), processes=2), tmp_path, mode="kill")
    while not (tmp_path / "step-1").exists():
        assert all(process.is_alive() for process in context.processes)
        time.sleep(0.05)
    os.kill(context.pids()[1], signal.SIGKILL)
    context.processes[1].join()
    (tmp_path / "killed").touch()
    context.processes[0].join()  # rank 0's next collective finds its peer gone
    assert context.processes[0].exitcode not in (0, None)
    assert not (tmp_path / "rank-0.pt").exists()


def test_processes_without_a_process_group_is_a_clear_error() -> None:
    with pytest.raises(RankGroupError, match="processes=2"):
        train(config(processes=2), model(), TOKENIZER, chat_data())


def test_batch_size_must_divide_into_the_ranks() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        config(batch_size=3, processes=2)
