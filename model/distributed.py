"""A process's place in a torchrun job, for the stages that split their work across processes (one per GPU):
``lait train`` (DDP), ``lait eval`` (a share of the pairs each) and ``lait features`` (a share of the shards)."""
from __future__ import annotations

import os

import torch


def torchrun_place() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def process_device(wanted: str) -> torch.device:
    """``wanted`` (auto | cpu | cuda | cuda:N) for this process: auto is cuda when there is one, and under
    torchrun a plain cuda is this process's own GPU, cuda:LOCAL_RANK."""
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    place = torchrun_place()
    if wanted == "cuda" and place is not None:
        wanted = f"cuda:{place[2]}"
    return torch.device(wanted)


def join_process_group(device: torch.device) -> tuple[int, int]:
    """Join torchrun's process group (NCCL for CUDA devices, gloo otherwise) once; (rank, world size),
    (0, 1) outside torchrun."""
    import torch.distributed as dist

    place = torchrun_place()
    if place is None:
        return 0, 1
    rank, world, _ = place
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return rank, world
