"""Ranks under ``torchrun``: who this process is, and combining per-rank results.

No launcher of our own: ``torchrun --nproc-per-node N -m btok_model.evaluate ...`` sets
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and :func:`init_from_env` joins the group (gloo on
the CPU, NCCL on CUDA). Every collective here moves CPU tensors in and out; with NCCL they
travel through this rank's GPU. Without ``torch.distributed`` initialised (one process) every
helper is the identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..embedder.encode import all_gather_rows, rank_and_world

__all__ = [
    "all_gather_objects",
    "all_gather_rows",
    "all_gather_topk",
    "all_reduce",
    "barrier",
    "init_from_env",
    "is_distributed",
    "is_main",
    "rank_and_world",
    "shutdown",
]

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
_joined = False  # whether init_from_env created the group (so shutdown leaves a caller's own group alone)


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one rank."""
    return rank_and_world()[1] > 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that prints and writes outputs."""
    return rank_and_world()[0] == 0


def init_from_env(device: str | None = None) -> str | None:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Args:
        device: the device the caller asked for (``"cpu"``, ``"cuda"``, ``"cuda:1"`` or None:
            CUDA when available).

    Returns:
        the device this rank should use: with ``WORLD_SIZE > 1`` and CUDA, ``cuda:LOCAL_RANK``
        (a rank per GPU; a ``device`` naming a GPU index is refused then), else ``device``
        unchanged. A group the caller already initialised is used as it is.
    """
    global _joined
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return device
    wants_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if wants_cuda:
        if device is not None and ":" in str(device):
            raise ValueError(
                f"under torchrun each rank takes the GPU of its LOCAL_RANK; pass --device cuda, not {device}"
            )
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if wants_cuda else "gloo")
        _joined = True
    return device


def shutdown() -> None:
    """Leave the process group :func:`init_from_env` joined (a no-op otherwise: a group the
    caller initialised stays theirs)."""
    global _joined
    if _joined and dist.is_initialized():
        dist.destroy_process_group()
    _joined = False


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced over every rank (``op``: ``"sum"``, ``"max"`` or ``"min"``), a new CPU
    tensor; the tensor itself when not distributed."""
    if op not in _OPS:
        raise ValueError(f"op must be one of {tuple(_OPS)}, got {op!r}")
    if not is_distributed():
        return tensor
    out = tensor.to(_comm_device(), copy=True).contiguous()
    dist.all_reduce(out, op=_OPS[op])
    return out.cpu()


def barrier() -> None:
    """Wait for every rank (a no-op without a group)."""
    if is_distributed():
        dist.barrier()


def all_gather_objects(value) -> list:
    """Every rank's picklable ``value``, in rank order (``[value]`` without a group); small
    things only (lists of bad rows, counts)."""
    if not is_distributed():
        return [value]
    out = [None] * rank_and_world()[1]
    dist.all_gather_object(out, value)
    return out


def all_gather_topk(local):
    """Every rank's :class:`~btok_model.inference.scoring.TopK` of the same queries, in rank
    order (merge them with :func:`~btok_model.inference.scoring.merge_topk`)."""
    from .scoring import TopK

    if not is_distributed():
        return [local]
    comm = _comm_device()
    world = rank_and_world()[1]
    values = [torch.empty_like(local.values, device=comm) for _ in range(world)]
    indices = [torch.empty_like(local.indices, device=comm) for _ in range(world)]
    dist.all_gather(values, local.values.to(comm).contiguous())
    dist.all_gather(indices, local.indices.to(comm).contiguous())
    return [TopK(v.cpu(), i.cpu()) for v, i in zip(values, indices)]
