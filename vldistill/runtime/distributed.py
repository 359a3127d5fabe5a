"""Several processes sharing independent work: expert trajectories and evaluation seeds.

Launched by torchrun (`torchrun --nproc_per_node=K -m vldistill.cli buffer CONFIG`, or across
nodes with its rendezvous flags, e.g. one torchrun per node started by SLURM `srun`), each
process reads RANK / WORLD_SIZE / LOCAL_RANK from the environment, joins the process group
(NCCL when it drives a GPU, gloo on CPU) and takes every world_size-th item of the work. Started any other
way it is rank 0 of a world of 1 and every function here is a no-op, so the stages call them
unconditionally.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Context:
    """Where this process stands among the ones launched together."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0         # rank within its node: which GPU it drives

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> Context:
    """This process's rank and world, from torchrun's environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    return Context(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def local_device(device: torch.device) -> torch.device:
    """A bare `cuda` becomes this process's GPU (cuda:LOCAL_RANK) when several run together."""
    ctx = context()
    if device.type == "cuda" and device.index is None and ctx.world_size > 1:
        return torch.device("cuda", ctx.local_rank % max(torch.cuda.device_count(), 1))
    return device


def init(device: torch.device) -> Context:
    """Join the process group when launched as one of several processes (idempotent).

    NCCL for processes that drive GPUs, gloo otherwise; the rendezvous (MASTER_ADDR,
    MASTER_PORT) comes from torchrun's environment.
    """
    ctx = context()
    if ctx.world_size > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise UserError("WORLD_SIZE > 1 but MASTER_ADDR is not set: launch with torchrun")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method="env://")
        atexit.register(shutdown)       # once per process: commands run in-process share the group
        log.info("process %d of %d (local rank %d) joined with %s on %s", ctx.rank,
                 ctx.world_size, ctx.local_rank, backend, device)
    return ctx


def barrier() -> None:
    """Wait for every process (nothing to wait for when alone)."""
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling caches on disk); the others run it after."""
    ctx = context()
    if not ctx.is_main:
        barrier()
    yield
    if ctx.is_main:
        barrier()


def shard(items: Sequence[T], ctx: Context | None = None) -> list[T]:
    """This process's share: items rank, rank + world, rank + 2 world, ..."""
    ctx = ctx or context()
    return list(items[ctx.rank::ctx.world_size])


def sharded_map(fn: Callable[[T], R], items: Sequence[T], progress: str | None = None) -> list[R]:
    """[fn(item) for item in items], each process computing its share; every process gets
    the whole list back, in the order of `items`. `progress` labels a progress bar."""
    ctx = context()
    share = shard(items, ctx)
    mine = [fn(item) for item in tqdm(share, desc=progress, unit="item", disable=progress is None)]
    if ctx.world_size == 1 or not dist.is_initialized():
        return mine
    gathered: list[list[R] | None] = [None] * ctx.world_size
    dist.all_gather_object(gathered, mine)
    out: list[R] = [None] * len(items)      # type: ignore[list-item]
    for rank, part in enumerate(gathered):
        out[rank::ctx.world_size] = part
    return out
