"""Top-k encoding and decoding that never touch the dense (B, M) code: for wide sparse autoencoders.

The encoder still needs its full forward matmul to find the winners; everything after it works on the
k winners of each sample: the decoder sums k decoder rows per sample (an embedding bag), and the encoder's
backward visits only the k selected rows of its weight. Gao et al. (2024) measured over 100x for the
decode at M = 16384 on a 2-core CPU. On CPU float32 the kernels of :mod:`ksparse_pl.functional.native_rows`
do the row work; elsewhere ``F.embedding_bag`` and ``index_add_`` do.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ksparse_pl.functional._autograd import first_order_only
from ksparse_pl.functional.native import native_serves
from ksparse_pl.functional.native_rows import dot_rows, gather_rows, scatter_rows
from ksparse_pl.functional.selection import topk_indices


class _SelectedRows(torch.autograd.Function):
    """``values[b, j] = x[b] . weight[idx[b, j]] + bias[idx[b, j]]`` with gradients only at the selected rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, indices: Tensor, values: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight, indices)
        return values.clone()

    @staticmethod
    @first_order_only
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, weight, indices = ctx.saved_tensors
        # Only what autograd asks for: an autoencoder's input (the data) needs no gradient, and computing it
        # would cost about as much as the decode.
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad, m = grad.to(weight.dtype), weight.shape[0]
        grad_x = _selected_rows_input_grad(weight, indices, grad).to(x.dtype) if needs_x else None
        grad_weight = _selected_rows_weight_grad(x.to(weight.dtype), indices, grad, m) if needs_weight else None
        grad_bias = grad.new_zeros(m).index_add_(0, indices.reshape(-1), grad.reshape(-1)) if needs_bias else None
        return grad_x, grad_weight, grad_bias, None, None


def _selected_rows_input_grad(weight: Tensor, indices: Tensor, grad: Tensor) -> Tensor:
    """``sum_j grad[b, j] * weight[indices[b, j]]``: the input gradient of :class:`_SelectedRows`."""
    if native_serves(weight, grad, indices=indices):
        return gather_rows(weight, indices, grad)
    return F.embedding_bag(indices, weight, per_sample_weights=grad, mode="sum")


def _selected_rows_weight_grad(x: Tensor, indices: Tensor, grad: Tensor, m: int) -> Tensor:
    """The weight gradient of :class:`_SelectedRows`: ``G^T x`` for the (B, M) gradient ``G`` with k entries per
    row: row ``indices[b, j]`` gains ``grad[b, j] * x[b]``."""
    if native_serves(x, grad, indices=indices):
        return scatter_rows(x, indices, grad, m)
    # The (B*k, d) products added into their rows: on an H100 at d = 768, B = 256, k = 32 this took 0.09-0.15 ms
    # at M = 4096-65536, where torch.sparse.mm of the (M, B) sparse gradient took 0.43-1.61 ms.
    products = (grad.unsqueeze(-1) * x.unsqueeze(1)).reshape(-1, x.shape[1])
    return x.new_zeros(m, x.shape[1]).index_add_(0, indices.reshape(-1), products)


class _DecodeRows(torch.autograd.Function):
    """:func:`sparse_decode` without bias by the native kernels (CPU float32)."""

    @staticmethod
    def forward(ctx: Any, values: Tensor, indices: Tensor, rows: Tensor) -> Tensor:
        ctx.save_for_backward(values, indices, rows)
        return gather_rows(rows, indices, values)

    @staticmethod
    @first_order_only
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
        values, indices, rows = ctx.saved_tensors
        grad_values = dot_rows(rows, indices, grad) if ctx.needs_input_grad[0] else None
        grad_rows = scatter_rows(grad, indices, values, rows.shape[0]) if ctx.needs_input_grad[2] else None
        return grad_values, None, grad_rows


def topk_encode(x: Tensor, weight: Tensor, bias: Tensor, k: int, relu: bool = False) -> tuple[Tensor, Tensor]:
    """The k largest of ``x @ weight.T + bias`` per sample, as ``(values, indices)`` of shape ``(B, k)``.

    Same values and gradients as ``keep_winners(F.linear(x, weight, bias), ...)``, but the backward pass
    costs O(B*k*d) instead of three (B, M, d) matmuls.

    Example:
        >>> import torch
        >>> w, b = torch.eye(3), torch.zeros(3)
        >>> values, indices = topk_encode(torch.tensor([[0.1, 0.9, 0.5]]), w, b, k=2)
        >>> values, indices.sort().values
        (tensor([[0.9000, 0.5000]]), tensor([[1, 2]]))
    """
    with torch.no_grad():
        pre = F.linear(x, weight, bias)  # (B, M): the one dense matmul
    indices = topk_indices(pre, k)
    values = encode_at(x, weight, bias, indices, pre)
    return (values.relu() if relu else values), indices


def encode_at(x: Tensor, weight: Tensor, bias: Tensor, indices: Tensor, preactivation: Tensor | None = None) -> Tensor:
    """``(x @ weight.T + bias)`` at ``indices`` only, shape ``(B, k)``, with gradients for the selected rows only.

    For winners chosen elsewhere (a sparse layer's :meth:`~ksparse_pl.KSparse.select`). The backward costs
    O(B*k*d); pass the caller's ``preactivation`` (the full ``(B, M)`` product, no gradient needed) to read
    the values from it instead of recomputing them from the k rows.

    Example:
        >>> import torch
        >>> encode_at(torch.tensor([[1.0, 2.0]]), torch.eye(2), torch.zeros(2), torch.tensor([[1]]))
        tensor([[2.]])
    """
    with torch.no_grad():
        if preactivation is not None:
            values = preactivation.gather(1, indices)
        else:
            values = (weight[indices] @ x.unsqueeze(-1)).squeeze(-1) + bias[indices]  # (B, k, d) @ (B, d, 1)
    return _SelectedRows.apply(x, weight, bias, indices, values)


def sparse_decode(values: Tensor, indices: Tensor, rows: Tensor, bias: Tensor | None = None) -> Tensor:
    """``sum_j values[b, j] * rows[indices[b, j]] (+ bias)``: the decode of a top-k code, without the dense code.

    Args:
        values: ``(B, k)`` the winners' activations.
        indices: ``(B, k)`` their units.
        rows: ``(M, d)`` one decoder row per unit (the transpose of an ``nn.Linear(M, d)`` weight).
        bias: ``(d,)``.

    Example:
        >>> import torch
        >>> rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> sparse_decode(torch.tensor([[2.0, 3.0]]), torch.tensor([[0, 2]]), rows)
        tensor([[5., 3.]])
    """
    values = values.to(rows.dtype)
    if native_serves(values, rows, indices=indices):
        out = _DecodeRows.apply(values, indices, rows)
    else:
        out = F.embedding_bag(indices, rows, per_sample_weights=values, mode="sum")
    return out if bias is None else out + bias
