"""``once_differentiable`` for the kernels' backward passes, without its cost on the usual first-order call."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.autograd.function import once_differentiable

Backward = TypeVar("Backward", bound=Callable[..., Any])


def first_order_only(backward: Backward) -> Backward:
    """Mark a ``torch.autograd.Function.backward`` that autograd cannot differentiate (it calls a kernel).

    Autograd runs a backward with grad mode on only under ``create_graph=True``; then this is exactly
    :func:`~torch.autograd.function.once_differentiable` (a second backward raises). Otherwise the backward
    runs as it is: ``once_differentiable`` would only add a ``no_grad`` block and a Python call, about 15 us
    per step on a small machine, which is a tenth of a k-sparse layer's whole forward and backward at small
    shapes.
    """
    guarded = once_differentiable(backward)

    @functools.wraps(backward)
    def run(ctx: Any, *grads: Any) -> Any:
        return guarded(ctx, *grads) if torch.is_grad_enabled() else backward(ctx, *grads)

    return run  # type: ignore[return-value]
