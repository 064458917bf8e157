"""Sharing per-batch statistics between processes, so every rank updates its state with the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def distributed() -> bool:
    """Whether this process is one of several in an initialized ``torch.distributed`` group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_statistics(local: Tensor) -> tuple[Tensor, int]:
    """Every process's ``local`` vector stacked in rank order ``(R, L)``, and this process's rank.

    Outside ``torch.distributed`` (or with one process) this is ``(local[None], 0)`` with no communication.
    All processes must call it together, with vectors of the same length.
    """
    if not distributed():
        return local.unsqueeze(0), 0
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return torch.stack(gathered), dist.get_rank()
