"""Each selection's previous selection of the same unit, on CPU (``csrc/selection_history.c``).

Cottonwood's sensitivity needs, for every ``(sample, unit)`` selection, when that unit was selected before.
torch answers by sorting the pairs by unit, the costliest step of a layer's sensitivity bookkeeping on CPU;
pairs in sample order, as the layers produce them, need one pass instead.
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
