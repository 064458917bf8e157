r"""Activation-sparsity penalties for units that top-k does not force to be sparse (ReLU, ELU, sigmoid).

Each takes hidden activations ``h`` of shape ``(B, n)`` (extra leading dims are folded into the batch)
and returns a scalar to add to the loss, times a coefficient of your choice.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ksparse_pl.functional._checks import check_float_input


def _as_batch(h: Tensor) -> Tensor:
    check_float_input(h, "h")
    return h.reshape(-1, h.shape[-1])  # (..., n) -> (B, n)


def _check_rate(p: float, low_open: bool) -> float:
    ok = (0 < p < 1) if low_open else (p >= 0)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not ok:
        allowed = "(0, 1)" if low_open else "[0, inf)"
        raise ValueError(f"Expected `target` to be a float in {allowed}, but got {p!r}.")
    return float(p)


def l1_penalty(h: Tensor) -> Tensor:
    r"""Mean over the batch of :math:`\sum_j |h_j|`.

    Example:
        >>> import torch
        >>> l1_penalty(torch.tensor([[1.0, -2.0], [0.0, 3.0]]))
        tensor(3.)
    """
    return _as_batch(h).abs().sum(dim=1).mean()


def student_t_penalty(h: Tensor) -> Tensor:
    r"""Mean over the batch of :math:`\sum_j \log(1 + h_j^2)` (a Student-t prior on activations).

    Example:
        >>> import torch
        >>> student_t_penalty(torch.tensor([[0.0, 1.0]]))
        tensor(0.6931)
    """
    return torch.log1p(_as_batch(h).square()).sum(dim=1).mean()


def kl_sparsity_penalty(h: Tensor, target: float = 0.05, eps: float = 1e-6) -> Tensor:
    r"""For sigmoid units: :math:`\sum_j \mathrm{KL}(p \,\|\, \hat p_j)`, :math:`\hat p_j` the batch mean of unit j.

    .. math:: \mathrm{KL}(p \| q) = p \log\frac{p}{q} + (1 - p) \log\frac{1 - p}{1 - q}

    ``q`` is clamped to ``[eps, 1 - eps]`` so a unit that is always 0 or 1 gives a large finite value.

    Example:
        >>> import torch
        >>> kl_sparsity_penalty(torch.tensor([[0.5], [0.5]]), target=0.5)
        tensor(0.)
    """
    p = _check_rate(target, low_open=True)
    q = _as_batch(h).mean(dim=0).clamp(eps, 1 - eps)
    return (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).sum()


def mean_activation_penalty(h: Tensor, target: float = 0.0) -> Tensor:
    r"""For unbounded units (ReLU, ELU, leaky): :math:`\sum_j (p - \mathrm{mean}_b\, h_{bj})^2`.

    Example:
        >>> import torch
        >>> mean_activation_penalty(torch.tensor([[1.0, 0.0], [3.0, 2.0]]))
        tensor(5.)
    """
    p = _check_rate(target, low_open=False)
    return (p - _as_batch(h).mean(dim=0)).square().sum()


__all__ = ["kl_sparsity_penalty", "l1_penalty", "mean_activation_penalty", "student_t_penalty"]
