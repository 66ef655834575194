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
    """``wanted`` (auto | cpu | cuda | cuda:N) for this process, always with an index on CUDA (what
    ``torch.cuda.set_device`` accepts): auto is cuda when there is one, and a plain cuda is this process's own GPU,
    cuda:LOCAL_RANK under torchrun, else the current one. ``ValueError`` for another name (``gpu``), and for cuda
    on a machine without a usable CUDA GPU."""
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(wanted)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {wanted!r} is not auto, cpu, cuda or cuda:N")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"device {wanted!r}: no CUDA GPU is available here (torch.cuda.is_available() is false); "
                         f"use auto or cpu")
    if device.index is None:
        place = torchrun_place()
        device = torch.device("cuda", place[2] if place is not None else torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        raise ValueError(f"device {wanted!r}: cuda:{device.index} does not exist, this machine has "
                         f"{torch.cuda.device_count()} CUDA GPU(s)")
    return device


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


def collective_device(device: torch.device) -> torch.device:
    """Where a tensor must be for a collective of the process group: NCCL reduces and gathers device tensors
    only, gloo host ones."""
    import torch.distributed as dist

    return device if dist.get_backend() == "nccl" else torch.device("cpu")
