"""Reconstruction metrics for autoencoders, as a torchmetrics Metric and its functional twin."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def _fvu_sums(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    if preds.shape != target.shape:
        raise ValueError(
            f"Expected `preds` and `target` of the same shape, but got {tuple(preds.shape)} and {tuple(target.shape)}."
        )
    target = target.reshape(target.shape[0], -1).double()  # (B, ...) -> (B, d)
    preds = preds.reshape(preds.shape[0], -1).double()
    return (preds - target).square().sum(), target.sum(dim=0), target.square().sum(dim=0), target.shape[0]


def _fvu_compute(sse: Tensor, total: Tensor, total_sq: Tensor, count: Tensor | int) -> Tensor:
    variance_sum = (total_sq - total.square() / count).sum()  # sum over features of n * Var
    return (sse / variance_sum).float()


def fraction_of_variance_unexplained(preds: Tensor, target: Tensor) -> Tensor:
    r"""FVU: squared reconstruction error over the target's total variance around its per-feature mean.

    .. math:: \mathrm{FVU} = \frac{\sum_{b,j} (\hat x_{bj} - x_{bj})^2}{\sum_{b,j} (x_{bj} - \bar x_j)^2}

    0 is perfect; 1 is what predicting the per-feature mean scores.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
        >>> fraction_of_variance_unexplained(x.mean(dim=0).expand_as(x), x)
        tensor(1.)
    """
    return _fvu_compute(*_fvu_sums(preds, target))


class FractionOfVarianceUnexplained(Metric):
    """Accumulating :func:`fraction_of_variance_unexplained` over batches (and processes).

    Example:
        >>> import torch
        >>> metric = FractionOfVarianceUnexplained()
        >>> x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
        >>> metric.update(torch.zeros(1, 2), x[:1]); metric.update(torch.zeros(1, 2), x[1:])
        >>> metric.compute()
        tensor(3.5000)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    sse: Tensor
    total: Tensor
    total_sq: Tensor
    count: Tensor

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("sse", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        sse, total, total_sq, count = _fvu_sums(preds, target)
        # Out of place: states reset under inference mode (trainer.validate) must still update under no_grad.
        self.sse = self.sse + sse
        self.total = self.total + total  # broadcasts the scalar start to (d,) on the first update
        self.total_sq = self.total_sq + total_sq
        self.count = self.count + count

    def compute(self) -> Tensor:
        return _fvu_compute(self.sse, self.total, self.total_sq, self.count)


__all__ = ["FractionOfVarianceUnexplained", "fraction_of_variance_unexplained"]
