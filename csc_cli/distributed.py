"""Distributed data parallel training, set up from torchrun's environment (nccl on GPUs, gloo on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List

import torch
import torch.distributed as tdist
import torch.nn as nn


@dataclass
class DistributedContext:
    active: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls) -> "DistributedContext":
        """Join the process group when started by ``torchrun`` (WORLD_SIZE > 1); otherwise a
        single-process context."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            device, backend = torch.device("cuda", local_rank), "nccl"
        else:
            device, backend = torch.device("cpu"), "gloo"
        if not tdist.is_initialized():
            tdist.init_process_group(backend=backend)
        return cls(True, rank, world, local_rank, device)

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes files."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sum(self, values: List[float]) -> List[float]:
        """Element-wise sum over all ranks (identity in a single process)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t.tolist()

    def close(self) -> None:
        if self.active and tdist.is_initialized():
            tdist.barrier()
            tdist.destroy_process_group()
