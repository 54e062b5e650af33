"""The extraction's processes: one, or `torchrun --nproc-per-node N tt-extract ...` (each rank computes the batches
b with b % world == rank; rank 0 alone creates the store)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

@dataclass(frozen=True)
class Ranks:
    """This process's place among the extraction processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def gather(self, value) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values = [None] * self.world
        torch.distributed.all_gather_object(values, value)
        return values

    def from_rank0(self, value):
        """Rank 0's `value` on every rank (a picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def detect_ranks() -> Ranks:
    """WORLD_SIZE/RANK/LOCAL_RANK as torchrun sets them; a single process when absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    return Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_ranks(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (gloo on CPU, nccl on CUDA); each CUDA rank takes its own GPU."""
    if not ranks.distributed:
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device
