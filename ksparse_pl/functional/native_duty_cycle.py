"""A layer's duty-cycle bookkeeping in one call on CPU (``csrc/duty_cycle.c``).

:func:`~ksparse_pl.functional.update_duty_cycle` and the count updates around it are about ten torch
operations on vectors of a few thousand units; on CPU their dispatch costs more than their arithmetic, and
made a ``KSparse`` forward and backward take 1.24-1.36x the stateless ``k_sparse``'s at 256 x 4096
(``benchmarks/bench_activations.py``; 1.06-1.12x with this kernel). The kernel does the same float32
arithmetic in one pass, in place, so the state is bitwise the same. Given a :class:`WinState`,
:func:`~ksparse_pl.functional.native_topk.select_rows` runs it in the selection's own call.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.graph import increment_version

from ksparse_pl.functional.native import library


class WinState(NamedTuple):
    """A layer's win statistics, which :func:`add_wins_` (or a selection given them) updates in place."""

    duty_cycle: Tensor  #: ``(n,)`` float32
    selection_count: Tensor  #: ``(n,)`` int64: wins per unit so far
    samples_seen: Tensor  #: int64 scalar: samples so far
    period: int  #: the duty cycle's averaging period, in samples


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
    state = WinState(duty_cycle, selection_count, samples_seen, period)
    n = duty_cycle.shape[0]
    check_win_state("add_wins_", state, n)
    _check_vector("add_wins_", "counts", counts, n, torch.int64)
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
    mark_updated(state)


def check_win_state(caller: str, state: WinState, n: int) -> None:
    """Refuse a state the kernels cannot update in place: vectors other than contiguous ``(n,)`` CPU float32 /
    int64, a ``samples_seen`` other than an int64 CPU scalar."""
    _check_vector(caller, "duty_cycle", state.duty_cycle, n, torch.float32)
    _check_vector(caller, "selection_count", state.selection_count, n, torch.int64)
    seen = state.samples_seen
    if seen.numel() != 1 or seen.dtype != torch.int64 or not seen.is_cpu:
        raise ValueError(
            f"{caller}: expected an int64 CPU scalar `samples_seen`, but got {seen.dtype} {tuple(seen.shape)} on "
            f"{seen.device}."
        )


def mark_updated(state: WinState) -> None:
    """Count a kernel's update of ``state`` as torch's in-place operations do, so that autograd refuses a
    backward through a state read before."""
    increment_version((state.duty_cycle, state.selection_count, state.samples_seen))


def _check_vector(caller: str, name: str, tensor: Tensor, n: int, dtype: torch.dtype) -> None:
    if tensor.shape != (n,) or tensor.dtype != dtype or not tensor.is_cpu or not tensor.is_contiguous():
        raise ValueError(
            f"{caller}: expected a contiguous ({n},) {dtype} CPU `{name}`, but got {tuple(tensor.shape)} "
            f"{tensor.dtype} on {tensor.device} (contiguous: {tensor.is_contiguous()})."
        )
