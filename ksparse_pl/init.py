"""Initialization that knows a sparse layer leaves only k of its M inputs active.

After a layer that keeps k of M units, the next layer sees an effective fan-in of k, not M: He and
Glorot scale with that, and LSUV starts layers after a k-sparse layer from the Cottonwood factor
sqrt(M/k) before rescaling each layer to unit output variance on real data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ksparse_pl.functional._checks import check_positive_int
from ksparse_pl.layers import SparseActivation, SparseWeights

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def fan_in_and_out(weight: Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a Linear/Conv weight: ``in * kernel`` and ``out * kernel``."""
    if weight.dim() < 2:
        raise ValueError(f"Expected a weight with at least 2 dims, but got shape {tuple(weight.shape)}.")
    kernel = weight[0, 0].numel()
    return weight.shape[1] * kernel, weight.shape[0] * kernel


def _check_fraction(active_fraction: float) -> float:
    if isinstance(active_fraction, bool) or not isinstance(active_fraction, (int, float)):
        raise ValueError(f"Expected `active_fraction` to be a float in (0, 1], but got {active_fraction!r}.")
    if not 0 < active_fraction <= 1:
        raise ValueError(f"Expected `active_fraction` to be a float in (0, 1], but got {active_fraction!r}.")
    return float(active_fraction)


def he_normal_(weight: Tensor, active_fraction: float = 1.0) -> Tensor:
    r"""He (Kaiming) normal init with the effective fan-in: :math:`\mathcal N(0,\, 2 / (f \cdot \text{fan\_in}))`.

    Args:
        weight: a Linear/Conv weight, filled in place.
        active_fraction: share ``f = k / M`` of the inputs a sparse layer before this one leaves active.

    Example:
        >>> import torch
        >>> w = he_normal_(torch.empty(4000, 1000), active_fraction=0.02)  # fan-in 20 after top-20 of 1000
        >>> round(w.std().item(), 2)
        0.32
    """
    fan_in, _ = fan_in_and_out(weight)
    std = math.sqrt(2.0 / (fan_in * _check_fraction(active_fraction)))
    with torch.no_grad():
        return weight.normal_(0.0, std)


def glorot_normal_(weight: Tensor, active_fraction: float = 1.0) -> Tensor:
    r"""Glorot (Xavier) normal init with the effective fan-in.

    .. math:: w \sim \mathcal N\left(0,\; \frac{2}{f \cdot \text{fan\_in} + \text{fan\_out}}\right)

    Example:
        >>> import torch
        >>> w = glorot_normal_(torch.empty(1000, 1000), active_fraction=0.1)
        >>> round(w.std().item(), 3)
        0.043
    """
    fan_in, fan_out = fan_in_and_out(weight)
    std = math.sqrt(2.0 / (fan_in * _check_fraction(active_fraction) + fan_out))
    with torch.no_grad():
        return weight.normal_(0.0, std)


_SCHEMES: dict[str, Callable[[Tensor, float], Tensor]] = {"he": he_normal_, "glorot": glorot_normal_}


def sparse_aware_init_(model: nn.Module, scheme: Literal["he", "glorot"] = "he") -> nn.Module:
    """Initialize every Linear/Conv of ``model`` with ``scheme``, using the effective fan-in after sparse layers.

    Layers are visited in registration order (``model.modules()``), which is the data flow order of
    ``nn.Sequential`` and of most models; a Linear/Conv that follows a sparse layer gets
    ``active_fraction = k / width`` of that layer, and a :class:`~ksparse_pl.SparseWeights` layer's
    fan-in counts only its non-zero weights. Biases are zeroed; sparse weights stay masked.

    Example:
        >>> import torch
        >>> from ksparse_pl import KSparse
        >>> net = torch.nn.Sequential(torch.nn.Linear(64, 1000), KSparse(1000, k=10), torch.nn.Linear(1000, 10))
        >>> _ = sparse_aware_init_(net)
        >>> abs(net[2].weight.std().item() - (2 / 10) ** 0.5) < 0.02  # fan-in 10, not 1000
        True
    """
    if scheme not in _SCHEMES:
        raise ValueError(f"Expected `scheme` to be one of {sorted(_SCHEMES)}, but got {scheme!r}.")
    fraction = 1.0
    for module in _layers_in_order(model):
        if isinstance(module, SparseActivation):
            fraction = module.active_fraction
            continue
        weight, bias = _weight_and_bias(module)
        density = 1.0 - module.sparsity if isinstance(module, SparseWeights) else 1.0
        _SCHEMES[scheme](weight, fraction * density)
        if bias is not None:
            nn.init.zeros_(bias)
        fraction = 1.0
    _rezero_sparse_weights(model)
    return model


def _layers_in_order(model: nn.Module) -> list[nn.Module]:
    """Sparse activations and weighted layers in registration order; a :class:`SparseWeights` stands
    for the Linear/Conv it wraps (its forward calls the functional op, not the wrapped module)."""
    wrapped = {id(m.module) for m in model.modules() if isinstance(m, SparseWeights)}
    return [
        m
        for m in model.modules()
        if isinstance(m, (SparseActivation, SparseWeights)) or (isinstance(m, _WEIGHTED) and id(m) not in wrapped)
    ]


def _weight_and_bias(layer: nn.Module) -> tuple[Tensor, Tensor | None]:
    inner = layer.module if isinstance(layer, SparseWeights) else layer
    return inner.weight, inner.bias  # type: ignore[return-value]


def _rezero_sparse_weights(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, SparseWeights):
            module.rezero_weights()


def _call_order(model: nn.Module, run: Callable[[], Any]) -> list[tuple[nn.Module, float]]:
    """Linear/Conv layers in the order one forward pass calls them, each with the active fraction of
    the sparse layer that ran just before it (1.0 if none)."""
    order: list[tuple[nn.Module, float]] = []
    fraction = [1.0]

    def before_weighted(module: nn.Module, _inputs: Any) -> None:
        if all(m is not module for m, _ in order):
            order.append((module, fraction[0]))
        fraction[0] = 1.0

    def after_sparse(module: SparseActivation, _inputs: Any, _output: Any) -> None:
        fraction[0] = module.active_fraction

    handles = [
        module.register_forward_hook(after_sparse)
        if isinstance(module, SparseActivation)
        else module.register_forward_pre_hook(before_weighted)
        for module in _layers_in_order(model)
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return order


@contextmanager
def state_preserved(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in training mode (dropout off) and restore every buffer and mode afterwards, so a
    measuring pass leaves no trace in duty cycles, sensitivities or batch-norm statistics."""
    buffers = {name: buf.clone() for name, buf in model.named_buffers()}
    extra = {name: m.get_extra_state() for name, m in model.named_modules() if isinstance(m, SparseActivation)}
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(buffers[name])
        for name, m in model.named_modules():
            if name in extra:
                m.set_extra_state(extra[name])
        for m, mode in modes.items():
            m.training = mode


def _output_variance(layer: nn.Module, run: Callable[[], Any]) -> float:
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    try:
        run()
    finally:
        handle.remove()
    return float(captured[0].float().var())


@torch.no_grad()
def lsuv_(
    model: nn.Module,
    batch: Any,
    *,
    tol: float = 0.1,
    max_iters: int = 10,
    forward: Callable[[Any], Any] | None = None,
) -> dict[str, tuple[float, float]]:
    """Layer-sequential unit-variance init (Mishkin & Matas), aware of k-sparse layers.

    Every Linear/Conv gets an orthonormal weight and a zero bias; a layer right after a sparse layer that
    keeps k of M units is scaled by ``sqrt(M/k)`` (Cottonwood); then, in the order the forward pass calls
    them, each layer's weight is divided by the standard deviation of its output on ``batch`` until that
    variance is within ``tol`` of 1. The passes run in training mode with dropout off, and every buffer
    (duty cycles, sensitivities, batch-norm statistics) is restored afterwards.

    Args:
        model: the network; modified in place.
        batch: the input, passed to ``forward``.
        tol: accepted distance of each output variance from 1.
        max_iters: rescaling rounds per layer.
        forward: how to run the model on ``batch``; default ``model(batch)``.

    Returns:
        ``{layer name: (variance before rescaling, variance after)}`` in call order.

    Raises:
        ValueError: no Linear/Conv runs in the forward pass, or a layer's output has zero variance.

    Example:
        >>> import torch
        >>> from ksparse_pl import KSparse
        >>> net = torch.nn.Sequential(torch.nn.Linear(20, 100), KSparse(100, k=5), torch.nn.Linear(100, 8))
        >>> report = lsuv_(net, torch.randn(256, 20))
        >>> all(abs(after - 1) < 0.1 for _, after in report.values())
        True
    """
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"Expected `tol` to be a float in (0, 1), but got {tol!r}.")
    check_positive_int(max_iters, "max_iters")
    run_model = forward or model
    names = {m: n for n, m in model.named_modules()}
    with state_preserved(model):
        order = _call_order(model, lambda: run_model(batch))
        if not order:
            raise ValueError(f"lsuv_ found no Linear/Conv layer called by the forward pass of {type(model).__name__}.")
        for layer, fraction in order:
            weight, bias = _weight_and_bias(layer)
            nn.init.orthogonal_(weight)
            weight.mul_(math.sqrt(1.0 / fraction))
            if bias is not None:
                bias.zero_()
        _rezero_sparse_weights(model)
        run = lambda: run_model(batch)  # noqa: E731
        return {names[layer]: _rescale(layer, names[layer], run, tol, max_iters) for layer, _ in order}


def _rescale(layer: nn.Module, name: str, run: Callable[[], Any], tol: float, max_iters: int) -> tuple[float, float]:
    before = variance = _output_variance(layer, run)
    for _ in range(max_iters):
        if abs(variance - 1.0) < tol:
            break
        if not variance > 0:
            raise ValueError(f"lsuv_: layer {name!r} has output variance {variance} on the batch; cannot rescale.")
        _weight_and_bias(layer)[0].div_(math.sqrt(variance))
        variance = _output_variance(layer, run)
    if abs(variance - 1.0) >= tol:
        warnings.warn(
            f"lsuv_: layer {name!r} ended at output variance {variance:.4f} after {max_iters} rounds.", stacklevel=3
        )
    return before, variance


__all__ = ["fan_in_and_out", "glorot_normal_", "he_normal_", "lsuv_", "sparse_aware_init_", "state_preserved"]
