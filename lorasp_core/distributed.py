"""Data-parallel training: one `train` call per rank of a `torch.distributed` process group.

Every rank computes the same batch order (it depends only on seed and epoch) and takes its share of
each global micro-batch (`RankGroup.shard`), so a run with N ranks trains on the same global batches
as a 1-process run. Gradients are summed with one `all_reduce` per optimizer step after the step's
backward passes; the loss of each rank is divided by the step's *global* target count, so the sum is
exactly the 1-process gradient and every rank then takes an identical optimizer step.

Why not `DistributedDataParallel`'s wrapper: its reducer only reduces the backward pass that follows
its own `forward`, while `target_logits` runs the backbone and the LM head as two calls, and the step's
micro-batches are reduced once (not per micro-batch). The collectives are torch.distributed's own
(gloo on CPU, nccl on CUDA); who starts the ranks is the caller's choice (`init_rank`).

A group of one rank makes no collective call, so the 1-process path is the same code.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._C._distributed_c10d import Store  # torch.distributed re-exports them untyped

# How long a rank waits in a collective for the others: a dead rank usually breaks the gloo/nccl
# connection at once (the others fail at their next collective); this bounds the case where it hangs.
DEFAULT_TIMEOUT_SECONDS = 600.0


class RankGroupError(ValueError):
    """`train` was asked for N processes but is not one rank of an initialised N-rank group."""


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def init_rank(
    rank: int,
    world_size: int,
    store: Store,
    device: torch.device,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> Iterator[None]:
    """Make this process rank `rank` of a `world_size` group rendezvousing through `store` (a
    `torch.distributed.TCPStore`); the group is destroyed on exit, so a long-lived worker can run
    many jobs. On CPU each rank uses its share of the intra-op threads while the group lasts."""
    if device.type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())  # one GPU per rank
    dist.init_process_group(
        backend_for(device),
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_seconds),
    )
    threads = torch.get_num_threads()
    if device.type == "cpu":  # the ranks share this machine's cores: not each all of them
        torch.set_num_threads(max(1, threads // world_size))
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        dist.destroy_process_group()


@dataclass(frozen=True)
class RankGroup:
    """This process's place in the job's process group (`world_size == 1`: no group at all)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that evaluates, writes checkpoints and runs callbacks."""
        return self.rank == 0

    @classmethod
    def for_processes(cls, processes: int, device: torch.device) -> RankGroup:
        if processes == 1:
            return cls(0, 1, device)
        if not dist.is_initialized() or dist.get_world_size() != processes:
            found = dist.get_world_size() if dist.is_initialized() else "no"
            raise RankGroupError(
                f"processes={processes} needs train() to run in each rank of an initialised "
                f"{processes}-rank torch.distributed group ({found} group here; see init_rank)"
            )
        rank = dist.get_rank()
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        return cls(rank, processes, device)

    def shard(self, micro_batch: Sequence[int]) -> list[int]:
        """This rank's contiguous share of one global micro-batch (the last ranks' may be shorter,
        or empty, in an epoch's last, smaller batch)."""
        per_rank = -(-len(micro_batch) // self.world_size)
        return list(micro_batch[self.rank * per_rank : (self.rank + 1) * per_rank])

    def sum_values(self, values: Sequence[float]) -> list[float]:
        """The element-wise sum over ranks (float64, so token counts stay exact)."""
        if self.world_size == 1:
            return list(values)
        summed = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return [float(value) for value in summed.tolist()]

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank's flag is: rank 0's cancel reaches all at the same step."""
        return self.sum_values([1.0 if flag else 0.0])[0] > 0

    def sum_gradients(self, parameters: Sequence[nn.Parameter]) -> None:
        """Sum every parameter's gradient over the ranks, in one flat all_reduce.

        A rank whose share was empty has no gradient (None): it contributes zeros. A parameter that no
        rank computed a gradient for keeps None, as in a 1-process run (AdamW skips it)."""
        if self.world_size == 1 or not parameters:
            return
        present = self.sum_values([0.0 if p.grad is None else 1.0 for p in parameters])
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in parameters]
        )
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for parameter, seen in zip(parameters, present, strict=True):
            count = parameter.numel()
            if seen:
                summed = flat[offset : offset + count].view_as(parameter).to(parameter.dtype)
                parameter.grad = summed.clone()
            offset += count

    def broadcast_state(self, model: nn.Module) -> None:
        """Give every rank rank 0's trainable parameters and floating-point buffers, as DDP does at
        construction: ranks start identical even if their loading differed in some detail."""
        if self.world_size == 1:
            return
        trainable = [p.data for p in model.parameters() if p.requires_grad]
        buffers = [buffer for buffer in model.buffers() if buffer.is_floating_point()]
        with torch.no_grad():
            for tensor in [*trainable, *buffers]:
                copy = tensor.float()  # gloo has no bf16 broadcast on every build
                dist.broadcast(copy, src=0)
                tensor.copy_(copy)
