"""Each selection's previous selection of the same unit, and its sensitivity factor, on CPU
(``csrc/selection_history.c``).

Cottonwood's sensitivity needs, for every ``(sample, unit)`` selection, when that unit was selected before.
torch answers by sorting the pairs by unit, the costliest step of a layer's sensitivity bookkeeping on CPU;
pairs in sample order, as the layers produce them, need one pass instead. The factors then take a second
pass, where torch runs about a dozen operations over the pairs; :func:`factors_and_state` does a layer's
whole step (factors and the state after the batch) in one pass over the pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ksparse_pl.functional.native import library

_OUT_OF_RANGE, _NOT_IN_SAMPLE_ORDER, _NO_MEMORY, _LISTED_TWICE = 1, 2, 3, 4


def previous_selection(samples: Tensor, units: Tensor, n: int) -> Tensor | None:
    """For each pair, the sample of the previous pair with the same unit (-1 if none), or None when the
    pairs are not in nondecreasing sample order. ``samples`` and ``units``: 1-D int64 CPU tensors."""
    if samples.shape != units.shape or samples.dim() != 1:
        raise ValueError(
            f"previous_selection: expected 1-D `samples` and `units` of one length, but got shapes "
            f"{tuple(samples.shape)} and {tuple(units.shape)}."
        )
    _check_vectors("previous_selection", samples=samples, units=units)
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
    samples, units, sensitivity, decay = _checked("sensitivity_factors", samples, units, sensitivity, decay)
    _check_vectors("sensitivity_factors", previous=previous)
    if previous.shape[0] != pairs:
        raise ValueError(
            f"sensitivity_factors: expected one `previous` per pair ({pairs}), but got {previous.shape[0]}."
        )
    previous = previous.contiguous()
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


def factors_and_state(
    samples: Tensor, units: Tensor, sensitivity: Tensor, decay: Tensor, s_max: float
) -> tuple[Tensor, Tensor] | None:
    """A batch's sensitivity step in one pass over its pairs: every pair's factor and the ``(n,)`` state after
    the batch, as :func:`~ksparse_pl.functional.sensitivity_step_at` computes them; None when the pairs are
    not in nondecreasing sample order.

    ``samples``, ``units``: 1-D int64, one per pair; ``sensitivity``: ``(n,)`` float32, the state before the
    batch; ``decay``: ``(batch + 1,)`` float32, ``(1 - 1/tau) ** i``; all CPU tensors.
    """
    pairs, n, batch = samples.shape[0], sensitivity.shape[0], decay.shape[0] - 1
    samples, units, sensitivity, decay = _checked("factors_and_state", samples, units, sensitivity, decay)
    factors, after = torch.empty(pairs, dtype=torch.float32), torch.empty_like(sensitivity)
    status = library().ksparse_sensitivity_step(
        samples.data_ptr(),
        units.data_ptr(),
        pairs,
        sensitivity.data_ptr(),
        n,
        decay.data_ptr(),
        batch,
        s_max,
        factors.data_ptr(),
        after.data_ptr(),
        torch.get_num_threads(),
    )
    if status == _OUT_OF_RANGE:
        raise IndexError(
            f"factors_and_state: a sample outside [0, {batch}) (one less than the length of `decay`) or a unit "
            f"outside [0, {n})."
        )
    if status == _LISTED_TWICE:
        raise IndexError("factors_and_state: a (sample, unit) pair is listed twice.")
    if status == _NO_MEMORY:
        raise MemoryError("ksparse_pl's selection-history kernel could not allocate its work array")
    return None if status == _NOT_IN_SAMPLE_ORDER else (factors, after)


def _checked(
    caller: str, samples: Tensor, units: Tensor, sensitivity: Tensor, decay: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The pairs, the state and the decay table as the kernels read them (contiguous), checked."""
    _check_vectors(caller, samples=samples, units=units)
    _check_vectors(caller, torch.float32, sensitivity=sensitivity, decay=decay)
    if units.shape[0] != samples.shape[0]:
        raise ValueError(
            f"{caller}: expected `samples` and `units` of one length, but got {samples.shape[0]} and {units.shape[0]}."
        )
    return samples.contiguous(), units.contiguous(), sensitivity.contiguous(), decay.contiguous()


def _check_vectors(caller: str, dtype: torch.dtype = torch.int64, **vectors: Tensor) -> None:
    for name, tensor in vectors.items():
        if tensor.dim() != 1 or tensor.dtype != dtype or not tensor.is_cpu:
            raise ValueError(
                f"{caller}: expected a 1-D {dtype} CPU `{name}`, but got {tuple(tensor.shape)} {tensor.dtype} "
                f"on {tensor.device}."
            )
