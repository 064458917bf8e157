"""A layer's duty-cycle bookkeeping in one call on CPU (``csrc/duty_cycle.c``).

:func:`~ksparse_pl.functional.update_duty_cycle` and the count updates around it are about ten torch
operations on vectors of a few thousand units; on CPU their dispatch costs more than their arithmetic, and
made a ``KSparse`` forward and backward take 1.24-1.36x the stateless ``k_sparse``'s at 256 x 4096
(``benchmarks/bench_activations.py``; 1.06-1.12x with this kernel). The kernel does the same float32
arithmetic in one pass, in place, so the state is bitwise the same.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.graph import increment_version

from ksparse_pl.functional.native import library


def add_wins_(
    duty_cycle: Tensor,
    selection_count: Tensor,
    samples_seen: Tensor,
    counts: Tensor,
    batch: int,
    positions: int,
    period: int,
) -> None:
    """In place: ``selection_count += counts``, ``samples_seen += batch``, and ``duty_cycle`` becomes
    ``update_duty_cycle(duty_cycle, counts / positions, batch, samples_seen, period)``.

    ``duty_cycle``: ``(n,)`` float32; ``selection_count`` and ``counts``: ``(n,)`` int64; ``samples_seen``: an
    int64 scalar; all contiguous CPU tensors.
    """
    n = duty_cycle.shape[0]
    vectors = (
        ("duty_cycle", duty_cycle, torch.float32),
        ("selection_count", selection_count, torch.int64),
        ("counts", counts, torch.int64),
    )
    for name, tensor, dtype in vectors:
        if tensor.shape != (n,) or tensor.dtype != dtype or not tensor.is_cpu or not tensor.is_contiguous():
            raise ValueError(
                f"add_wins_: expected a contiguous ({n},) {dtype} CPU `{name}`, but got {tuple(tensor.shape)} "
                f"{tensor.dtype} on {tensor.device} (contiguous: {tensor.is_contiguous()})."
            )
    if samples_seen.numel() != 1 or samples_seen.dtype != torch.int64 or not samples_seen.is_cpu:
        raise ValueError(
            f"add_wins_: expected an int64 CPU scalar `samples_seen`, but got {samples_seen.dtype} on "
            f"{samples_seen.device}."
        )
    library().ksparse_add_wins(
        duty_cycle.data_ptr(),
        selection_count.data_ptr(),
        samples_seen.data_ptr(),
        counts.data_ptr(),
        n,
        batch,
        positions,
        period,
    )
    # As torch's in-place operations do, so that autograd refuses a backward through a state read before.
    increment_version((duty_cycle, selection_count, samples_seen))
