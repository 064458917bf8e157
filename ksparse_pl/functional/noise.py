"""Numenta's pixel-noise protocol for image classifiers ("How Can We Be So Dense?")."""

from __future__ import annotations

import torch
from torch import Tensor


def add_pixel_noise(
    images: Tensor, level: float, fill_value: float, generator: torch.Generator | None = None
) -> Tensor:
    """Set exactly ``int(H * W * level)`` distinct pixels of every image to ``fill_value`` (all channels).

    Args:
        images: ``(B, C, H, W)``, before normalization.
        level: share of pixels to overwrite, in [0, 1].
        fill_value: the value written (Numenta: the raw value that normalizes to 2.0).
        generator: random generator choosing the pixels (on the CPU).

    Example:
        >>> import torch
        >>> noisy = add_pixel_noise(torch.zeros(2, 1, 28, 28), 0.1, 0.7469, torch.Generator().manual_seed(0))
        >>> (noisy == 0.7469).flatten(1).sum(dim=1).tolist()
        [78, 78]
    """
    if not 0 <= level <= 1:
        raise ValueError(f"Expected `level` in [0, 1], but got {level!r}.")
    batch, _, height, width = images.shape
    count = int(height * width * level)
    ranks = torch.rand(batch, height * width, generator=generator).argsort(dim=1)  # a random permutation per image
    mask = (ranks < count).view(batch, 1, height, width).to(images.device)
    return images.masked_fill(mask, fill_value)
