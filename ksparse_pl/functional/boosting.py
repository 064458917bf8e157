"""Numenta's duty-cycle boosting: units that win less than their share get their scores scaled up."""

from __future__ import annotations

import torch
from torch import Tensor


def boost_factors(duty_cycle: Tensor, target_density: Tensor | float, boost_strength: Tensor | float) -> Tensor:
    r"""Per-unit factors that multiply the selection scores.

    .. math:: b_j = \exp(\beta\,(\text{target} - d_j))

    Args:
        duty_cycle: ``(n,)`` running fraction of samples in which each unit won.
        target_density: ``k / n``, the share every unit would have if usage were uniform (a number, or a
            0-dim tensor: faster, and the same result as its float32 value).
        boost_strength: :math:`\beta`; 0 gives factors of 1.

    Example:
        >>> import torch
        >>> boost_factors(torch.tensor([0.0, 0.5]), 0.5, 2.0)
        tensor([2.7183, 1.0000])
    """
    # In place on the difference: two fewer tensors allocated, the same float32 operations.
    return (target_density - duty_cycle).mul_(boost_strength).exp_()


def winner_counts(indices: Tensor, n: int) -> Tensor:
    """How many times each of the ``n`` units appears in ``indices`` (any shape), as int64.

    Example:
        >>> import torch
        >>> winner_counts(torch.tensor([[0, 2], [2, 3]]), 5)
        tensor([1, 0, 2, 1, 0])
    """
    flat = indices.reshape(-1)
    # Not torch.bincount: on a GPU it reads the largest index back to the host, waiting for the GPU every step.
    return torch.zeros(n, dtype=torch.int64, device=flat.device).index_add_(0, flat, torch.ones_like(flat))


def update_duty_cycle(
    duty_cycle: Tensor, counts: Tensor, batch_size: int | Tensor, samples_seen: int | Tensor, period: int
) -> Tensor:
    r"""The duty cycle after a batch of ``batch_size`` samples in which unit ``j`` won ``counts[j]`` times.

    .. math:: p = \min(\text{period}, \text{samples\_seen}),\quad d \leftarrow \frac{d\,(p - B) + c}{p}

    ``samples_seen`` counts this batch too, so the first batch gives ``d = c / B``. A batch larger than
    the period (``B > p``) would weigh the old duty cycle negatively; there ``p = B`` is used, so the
    duty cycle becomes the batch's own rate. An empty batch (``B = 0``) leaves it as it is, also before any
    sample (``p = 1`` there, where ``0 / 0`` would make it NaN for good).

    Example:
        >>> import torch
        >>> update_duty_cycle(torch.zeros(2), torch.tensor([3.0, 1.0]), 4, 4, 1000)
        tensor([0.7500, 0.2500])
    """
    p = torch.as_tensor(samples_seen, device=duty_cycle.device).clamp(max=period).clamp(min=batch_size).clamp(min=1)
    return (duty_cycle * (p - batch_size) + counts) / p
