"""Where a training or evaluation job runs: its process group (torchrun's or SLURM's environment; a single
process otherwise), its device and seeds, bf16 autocast on CUDA, and the DDP / torch.compile wrappers of a
training objective (a module that computes the loss)."""
from __future__ import annotations

import atexit
import os
import random
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun
        info = DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    elif int(env.get("SLURM_NTASKS", "1")) > 1 and "MASTER_ADDR" in env:  # srun / submitit tasks
        info = DistInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    else:
        return DistInfo()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
    return info


def setup(seed: int) -> tuple[DistInfo, torch.device]:
    """Process group, this process's device, and every RNG seeded with ``seed + rank``."""
    info = init_distributed()
    device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    for seed_fn in (torch.manual_seed, np.random.seed, random.seed):
        seed_fn(seed + info.rank)
    return info, device


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if torch.device(device).type == "cuda" else nullcontext()


def distributed(objective: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """The objective under DDP when there are several processes."""
    if not info.enabled:
        return objective
    return torch.nn.parallel.DistributedDataParallel(objective, device_ids=[info.local_rank] if device.type == "cuda" else None)


def compiled(objective: torch.nn.Module, setting: str, device: torch.device) -> torch.nn.Module:
    """The objective under torch.compile when ``setting`` (recipe key ``compile``) is "on", or "auto" on CUDA.

    Compile the DDP-wrapped module (torch's advice: DDP's optimizer splits the graph at its buckets)."""
    if setting == "on" or (setting == "auto" and device.type == "cuda"):
        return torch.compile(objective)
    return objective


def write_peak_memory_at_exit(path: Path) -> None:
    """At the process's exit, write its peak CUDA memory (MiB; 0 where it used none) into ``path``."""
    def write() -> None:
        used = torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else 0
        path.write_text(f"{used / 2**20:.0f}\n")

    atexit.register(write)
