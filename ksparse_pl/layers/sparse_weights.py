"""Numenta's sparse weights: each output unit of a Linear or Conv2d keeps a fixed random subset of inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SparseWeights(nn.Module):
    """Wrap ``nn.Linear`` or ``nn.Conv2d`` so each output unit keeps exactly ``round((1 - sparsity) * fan_in)``
    non-zero weights.

    The kept positions are drawn once, with ``generator`` (torch's default generator if ``None``), and
    stored in the ``mask`` buffer. The forward pass uses ``weight * mask``, so the gradient at a masked
    position is exactly zero; together with zeroing those weights here, every torch optimizer (momentum,
    Adam's moments, weight decay included) leaves them exactly zero, in checkpoints too.

    Args:
        module: the ``nn.Linear`` or ``nn.Conv2d`` to sparsify (its weights are zeroed in place where masked).
        sparsity: share of each unit's fan-in that is zero, in ``[0, 1)``.
        generator: random generator for the mask.

    Raises:
        TypeError: ``module`` is not ``nn.Linear`` or ``nn.Conv2d``.
        ValueError: ``sparsity`` outside ``[0, 1)``, or leaving no weight for a unit.

    Example:
        >>> import torch
        >>> layer = SparseWeights(torch.nn.Linear(10, 3), sparsity=0.7)
        >>> (layer.module.weight != 0).sum(dim=1)
        tensor([3, 3, 3])
    """

    module: nn.Linear | nn.Conv2d
    mask: Tensor

    def __init__(self, module: nn.Module, sparsity: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"Expected `module` to be nn.Linear or nn.Conv2d, but got {type(module).__name__}.")
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
            raise ValueError(f"Expected `sparsity` to be a float in [0, 1), but got {sparsity!r}.")
        weight = module.weight
        fan_in = weight[0].numel()
        nonzero = round((1 - sparsity) * fan_in)
        if nonzero < 1:
            raise ValueError(
                f"`sparsity`={sparsity} of fan_in={fan_in} leaves {nonzero} weights per unit; expected at least 1."
            )
        self.module = module
        self.sparsity = float(sparsity)
        self.register_buffer("mask", _random_mask(weight.shape, nonzero, generator).to(weight.device))
        self.rezero_weights()

    @torch.no_grad()
    def rezero_weights(self) -> None:
        """Zero the masked weights in place (after re-initializing the wrapped module, say)."""
        self.module.weight.mul_(self.mask)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.module.weight * self.mask
        if isinstance(self.module, nn.Linear):
            return F.linear(x, weight, self.module.bias)
        return self.module._conv_forward(x, weight, self.module.bias)

    def extra_repr(self) -> str:
        return f"sparsity={self.sparsity:g}, nonzero_per_unit={int(self.mask[0].sum())}"


def _random_mask(shape: torch.Size, nonzero: int, generator: torch.Generator | None) -> Tensor:
    """A 0/1 float mask of ``shape`` with exactly ``nonzero`` ones in each output unit's fan-in."""
    out_units, fan_in = shape[0], shape[1:].numel()
    ranks = torch.rand(out_units, fan_in, generator=generator).argsort(dim=1)  # (out, fan_in) random permutation
    return (ranks < nonzero).to(torch.float32).view(shape)
