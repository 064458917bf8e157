"""Cottonwood's adaptive sensitivity, with the published ordering bug fixed.

A unit that stays unselected grows its sensitivity toward ``s_max`` with time constant ``tau`` (one step per
training sample). When it is selected, the gradient through it is multiplied by the sensitivity it had just
before that sample; then the sensitivity resets to 1.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ksparse_pl.functional.native import native_serves
from ksparse_pl.functional.native_history import factors_and_state, previous_selection, sensitivity_factors


def idle_sensitivity(s0: Tensor, idle: Tensor, s_max: float, tau: float) -> Tensor:
    r"""Sensitivity after ``idle`` unselected samples, starting from ``s0``.

    .. math:: s = s_{max} - (s_{max} - s_0)\,(1 - 1/\tau)^{n}

    Example:
        >>> import torch
        >>> idle_sensitivity(torch.tensor(1.0), torch.tensor(3), s_max=10.0, tau=2.0)
        tensor(8.8750)
    """
    return s_max - (s_max - s0) * _decay(idle, tau)


def _decay(idle: Tensor, tau: float) -> Tensor:
    """``(1 - 1/tau) ** idle`` in float32, rounded from float64.

    float32 ``pow`` differs in the last bit between torch's vectorized loop and its scalar one, so the same
    power came out differently by its place in a tensor; rounded from float64, a table of powers (the
    kernels') and powers computed per unit (torch's path, other processes) give the same state.
    """
    wide = torch.float32 if idle.device.type == "mps" else torch.float64  # MPS has no float64
    # A Python number as the base: a tensor made of it would be copied to a GPU, waiting for it, every step.
    return torch.pow(1.0 - 1.0 / tau, idle.to(wide)).float()


@functools.lru_cache(maxsize=16)
def _decay_table(length: int, tau: float) -> Tensor:
    """``(1 - 1/tau) ** i`` for ``i`` in ``[0, length)``, on the CPU, for the kernels (which only read it).

    Kept per (length, tau): a batch size and a tau hold for many steps, and building the table took five torch
    operations, about 40 us, every training step of a layer with sensitivity.
    """
    return _decay(torch.arange(length), tau)


def sensitivity_step(selected: Tensor, sensitivity: Tensor, s_max: float, tau: float) -> tuple[Tensor, Tensor]:
    """Gradient factors for a batch of samples, in order, and the sensitivity after it.

    A batch of B samples gives the factors and final state of B batches of one sample (up to float
    rounding of the closed form), because each sample's factor depends only on how long the unit has
    been idle and where that idle run started.

    Args:
        selected: ``(B, n)`` bool, whether unit ``j`` won in sample ``b`` (samples in time order).
        sensitivity: ``(n,)`` the sensitivities before the batch.
        s_max: the bound the sensitivity grows toward.
        tau: the time constant, in samples.

    Returns:
        ``(factors, new_sensitivity)``: ``factors[b, j]`` is unit ``j``'s sensitivity just before sample
        ``b`` where ``selected[b, j]`` (0 elsewhere); ``new_sensitivity`` the ``(n,)`` state after the batch.

    Example:
        >>> import torch
        >>> sel = torch.tensor([[False], [False], [True]])
        >>> factors, s = sensitivity_step(sel, torch.ones(1), s_max=10.0, tau=2.0)
        >>> factors[2], s
        (tensor([7.7500]), tensor([1.]))
    """
    samples, units = selected.nonzero(as_tuple=True)
    values, new = sensitivity_step_at(samples, units, sensitivity, selected.shape[0], s_max, tau)
    factors = torch.zeros(selected.shape, dtype=values.dtype, device=values.device)
    return factors.index_put_((samples, units), values), new


def sensitivity_step_at(
    samples: Tensor, units: Tensor, sensitivity: Tensor, batch_size: int, s_max: float, tau: float
) -> tuple[Tensor, Tensor]:
    """:func:`sensitivity_step` for selections given as ``(sample, unit)`` pairs, each pair at most once.

    Costs O(P log P) in the number of pairs P (B*k for top-k) instead of O(B*n); O(P) on CPU when the pairs
    come in sample order, as the layers give them.

    Returns:
        ``(factors, new_sensitivity)``: one factor per pair, in the order given, and the ``(n,)`` state.
    """
    if native_serves(sensitivity, indices=samples) and native_serves(indices=units):
        # One pass over the pairs for the factors and the state, instead of about twenty torch operations.
        stepped = factors_and_state(samples, units, sensitivity, _decay_table(batch_size + 1, tau), s_max)
        if stepped is not None:  # None: the pairs are not in sample order
            return stepped
    factors = sensitivity_factors_at(samples, units, sensitivity, batch_size, s_max, tau)
    last = last_selected(samples, units, sensitivity.shape[0])
    return factors, sensitivity_after(last, batch_size, sensitivity, s_max, tau)


def sensitivity_factors_at(
    samples: Tensor, units: Tensor, sensitivity: Tensor, batch_size: int, s_max: float, tau: float
) -> Tensor:
    """The factor of every ``(sample, unit)`` selection pair, in the order given (see :func:`sensitivity_step_at`)."""
    previous = _previous_selection(samples, units, sensitivity.shape[0], batch_size)
    if native_serves(sensitivity, indices=samples) and native_serves(indices=units):
        # One pass over the pairs; the powers come from torch, once per idle length.
        decay = _decay_table(batch_size, tau)
        return sensitivity_factors(samples, units, previous, sensitivity, decay, s_max)
    # index_select, not advanced indexing: several times faster on CPU for the B*k pairs.
    return _since_last(previous, samples, sensitivity.index_select(0, units), s_max, tau)


def _previous_selection(samples: Tensor, units: Tensor, n: int, batch_size: int) -> Tensor:
    """For each pair, the sample at which its unit was selected before it in the batch, -1 if never."""
    if native_serves(indices=samples) and native_serves(indices=units):
        previous = previous_selection(samples, units, n)
        if previous is not None:  # None: the pairs are not in sample order
            return previous
    if samples.numel() == 0:  # no pairs: the shifts below would leave one element where there is none
        return samples.clone()
    order = torch.argsort(units * batch_size + samples)  # by unit, then by sample
    unit, sample = units[order], samples[order]
    before = torch.cat([sample.new_full((1,), -1), sample[:-1]])
    same_unit = torch.cat([unit.new_zeros(1, dtype=torch.bool), unit[1:] == unit[:-1]])
    return torch.empty_like(sample).index_copy_(0, order, torch.where(same_unit, before, -1))


def last_selected(samples: Tensor, units: Tensor, n: int) -> Tensor:
    """``(n,)`` the last sample index at which each unit was selected, -1 where it never was.

    Example:
        >>> import torch
        >>> last_selected(torch.tensor([0, 2, 1]), torch.tensor([1, 1, 0]), 3)
        tensor([ 1,  2, -1])
    """
    return torch.full((n,), -1, dtype=samples.dtype, device=samples.device).scatter_reduce_(0, units, samples, "amax")


def sensitivity_after(last: Tensor, batch_size: int | Tensor, sensitivity: Tensor, s_max: float, tau: float) -> Tensor:
    """``(n,)`` sensitivity after a batch of ``batch_size`` samples whose last selections are ``last``."""
    return _since_last(last, batch_size, sensitivity, s_max, tau)


def sensitivity_across(
    last: Tensor, sizes: Tensor, rank: int, sensitivity: Tensor, s_max: float, tau: float
) -> tuple[Tensor, Tensor]:
    """Sensitivity when one global batch is split across processes, the global order being rank order.

    Args:
        last: ``(R, n)`` each process's :func:`last_selected`, in its own sample indices.
        sizes: ``(R,)`` each process's number of samples.
        rank: this process.
        sensitivity: ``(n,)`` the (identical) state before the global batch.

    Returns:
        ``(start, final)``: the sensitivity at this process's first sample (after the samples of the ranks
        before it) and the state after the whole global batch, as one process would compute them.

    Example:
        >>> import torch
        >>> last = torch.tensor([[-1], [0]])  # rank 0: unit idle for 2 samples; rank 1 selects it first
        >>> start, final = sensitivity_across(last, torch.tensor([2, 3]), 1, torch.ones(1), 10.0, 2.0)
        >>> start, final
        (tensor([7.7500]), tensor([7.7500]))
    """
    offsets = torch.cumsum(sizes, 0) - sizes
    global_last = torch.where(last >= 0, last + offsets.unsqueeze(1), -1)  # (R, n) in global sample indices
    # Rank 0 starts from the state itself, as a single process does (the closed form after 0 idle samples
    # equals it only up to rounding).
    start = _since_last(global_last[:rank].amax(0), offsets[rank], sensitivity, s_max, tau) if rank else sensitivity
    final = _since_last(global_last.amax(0), sizes.sum(), sensitivity, s_max, tau)
    return start, final


def _since_last(last: Tensor, now: int | Tensor, s_before: Tensor, s_max: float, tau: float) -> Tensor:
    """Sensitivity at step ``now`` given the last selection step ``last`` (-1: none in this batch, so the
    idle run started from ``s_before`` at step 0)."""
    seen = last >= 0
    idle = torch.where(seen, now - last - 1, now)
    s0 = torch.where(seen, torch.ones_like(s_before), s_before)
    return idle_sensitivity(s0, idle, s_max, tau)
