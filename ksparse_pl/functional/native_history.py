"""Each selection's previous selection of the same unit, and its sensitivity factor, on CPU
(``csrc/selection_history.c``).

Cottonwood's sensitivity needs, for every ``(sample, unit)`` selection, when that unit was selected before.
torch answers by sorting the pairs by unit, the costliest step of a layer's sensitivity bookkeeping on CPU;
pairs in sample order, as the layers produce them, need one pass instead. The factors then take a second
pass, where torch runs about a dozen operations over the pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ksparse_pl.functional.native import library

_OUT_OF_RANGE, _NOT_IN_SAMPLE_ORDER, _NO_MEMORY = 1, 2, 3


def previous_selection(samples: Tensor, units: Tensor, n: int) -> Tensor | None:
    """For each pair, the sample of the previous pair with the same unit (-1 if none), or None when the
    pairs are not in nondecreasing sample order. ``samples`` and ``units``: 1-D int64 CPU tensors."""
    if samples.shape != units.shape or samples.dim() != 1:
        raise ValueError(
            f"previous_selection: expected 1-D `samples` and `units` of one length, but got shapes "
            f"{tuple(samples.shape)} and {tuple(units.shape)}."
        )
    for name, pairs in (("samples", samples), ("units", units)):
        if pairs.dtype != torch.int64 or pairs.device.type != "cpu":
            raise ValueError(
                f"previous_selection: expected int64 CPU `{name}`, but got {pairs.dtype} on {pairs.device}."
            )
    samples, units = samples.contiguous(), units.contiguous()
    previous = torch.empty_like(samples)
    status = library().ksparse_previous_selection(
        samples.data_ptr(), units.data_ptr(), samples.shape[0], n, previous.data_ptr()
    )
    if status == _OUT_OF_RANGE:
        raise IndexError(f"previous_selection: a unit in `units` is outside [0, {n}).")
    if status == _NO_MEMORY:
        raise MemoryError("ksparse_pl's selection-history kernel could not allocate its work array")
    return None if status == _NOT_IN_SAMPLE_ORDER else previous


def sensitivity_factors(
    samples: Tensor, units: Tensor, previous: Tensor, sensitivity: Tensor, decay: Tensor, s_max: float
) -> Tensor:
    """Each pair's factor ``s_max - (s_max - s0) * decay[idle]``, with the float32 operations of
    :func:`~ksparse_pl.functional.idle_sensitivity` (see ``csrc/selection_history.c``).

    ``samples``, ``units``, ``previous`` (from :func:`previous_selection` or a sort): 1-D int64, one per pair;
    ``sensitivity``: ``(n,)`` float32, the state before the batch; ``decay``: ``(batch,)`` float32,
    ``(1 - 1/tau) ** i``; all CPU tensors.
    """
    pairs, n, batch = samples.shape[0], sensitivity.shape[0], decay.shape[0]
    checked = (("samples", samples, torch.int64), ("units", units, torch.int64), ("previous", previous, torch.int64))
    for name, tensor, dtype in (*checked, ("sensitivity", sensitivity, torch.float32), ("decay", decay, torch.float32)):
        if tensor.dim() != 1 or tensor.dtype != dtype or not tensor.is_cpu:
            raise ValueError(
                f"sensitivity_factors: expected a 1-D {dtype} CPU `{name}`, but got {tuple(tensor.shape)} "
                f"{tensor.dtype} on {tensor.device}."
            )
    if units.shape[0] != pairs or previous.shape[0] != pairs:
        raise ValueError(
            f"sensitivity_factors: expected `samples`, `units` and `previous` of one length, but got "
            f"{pairs}, {units.shape[0]} and {previous.shape[0]}."
        )
    samples, units, previous = samples.contiguous(), units.contiguous(), previous.contiguous()
    sensitivity, decay = sensitivity.contiguous(), decay.contiguous()
    factors = torch.empty(pairs, dtype=torch.float32)
    if library().ksparse_sensitivity_factors(
        samples.data_ptr(),
        units.data_ptr(),
        previous.data_ptr(),
        pairs,
        sensitivity.data_ptr(),
        n,
        decay.data_ptr(),
        batch,
        s_max,
        factors.data_ptr(),
    ):
        raise IndexError(
            f"sensitivity_factors: a sample outside [0, {batch}) (the length of `decay`), a unit outside "
            f"[0, {n}), or a `previous` sample not before its own (a (sample, unit) pair listed twice?)."
        )
    return factors
