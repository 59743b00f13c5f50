"""One process or one of ``torchrun``'s: which rank this is, and the device it trains on.

``torchrun`` describes the job in environment variables (RANK, WORLD_SIZE, LOCAL_RANK); a
plain ``python -m captioner train`` has none and runs as a world of one, so the trainer has a
single code path and only asks ``Dist`` whether to log, write or all-reduce.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from captioner.runtime.device import pick_device


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank 0 (``main``) alone logs and writes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def on(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None) -> tuple[Dist, torch.device]:
    """Single process, or one of ``torchrun``'s (RANK/WORLD_SIZE/LOCAL_RANK): nccl on CUDA,
    gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), pick_device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device or "auto") not in ("cpu",)
    if cuda:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local), dev
