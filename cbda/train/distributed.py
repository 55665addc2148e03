"""Multi-process (torchrun / DDP) helpers. Single-process runs pass through every function.

Acquisition itself is distributed by cbda.select(shard=True) (each rank scores its shard); the
state broadcast here sends rank 0's replica to every rank, for callers that hold it on rank 0 only."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init(device_type: str) -> tuple[int, int, int]:
    """Initialise the process group when launched with WORLD_SIZE > 1; returns env_world()."""
    rank, world, local = env_world()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return rank, world, local


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group: a barrier first, so that no rank tears gloo down while another
    is still inside a collective (which aborts the process), then destroy the group."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place; returned). Gloo/NCCL-agnostic: CPU int64 ok on gloo."""
    if is_distributed():
        dist.all_reduce(t)
    return t


def state_to_bytes(state) -> bytes:
    """Serialise an ActiveLabelState through its own (atomic, file-based) save."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "state.pt"
        state.save(path)
        return path.read_bytes()


def state_from_bytes(data: bytes):
    import cbda

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "state.pt"
        path.write_bytes(data)
        return cbda.ActiveLabelState.load(path)


def broadcast_state(state, src: int = 0):
    """Return rank `src`'s labelling state on every rank (the argument itself when not
    distributed). Other ranks may pass None."""
    if not is_distributed():
        return state
    payload = [state_to_bytes(state) if dist.get_rank() == src else None]
    dist.broadcast_object_list(payload, src=src)
    return state if dist.get_rank() == src else state_from_bytes(payload[0])
