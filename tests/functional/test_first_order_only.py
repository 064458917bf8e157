"""The kernels' backward passes: first-order gradients with or without create_graph, and no silent second order.

Without the kernels (no C compiler, ``KSPARSE_PL_NATIVE=0``) the top-k functions run on torch's operations, whose
second order is real: there it must be the true one instead."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from ksparse_pl.functional import k_sparse, keep_winners, topk_indices
from ksparse_pl.functional.native import native_enabled
from ksparse_pl.functional.sparse_coding import sparse_decode, topk_encode

_g = torch.Generator().manual_seed(0)
WEIGHT, BIAS, DECODER = (
    torch.randn(40, 12, generator=_g),
    torch.randn(40, generator=_g),
    torch.randn(40, 12, generator=_g),
)
SCALE = torch.rand(6, 5, generator=_g)


def encode_decode(x: Tensor) -> Tensor:
    values, indices = topk_encode(x, WEIGHT, BIAS, 5)
    return sparse_decode(values, indices, DECODER)


CALLS: dict[str, Callable[[Tensor], Tensor]] = {
    "k_sparse": lambda x: k_sparse(x, 5, relu=True),
    "keep_winners": lambda x: keep_winners(x, topk_indices(x.detach(), 5), grad_scale=SCALE),
    "sparse encode and decode": encode_decode,
}


# d/dx of the sum of the gradient of sum(out ** 2), by hand: 2 at the winners that pass ReLU, 0 elsewhere; with
# grad_scale every derivative through out is scaled, the gradient's own too: 2 * scale ** 2.
SECOND_ORDER: dict[str, Callable[[Tensor], Tensor]] = {
    "k_sparse": lambda x: 2.0 * (k_sparse(x, 5, relu=True) > 0),
    "keep_winners": lambda x: torch.zeros_like(x).scatter_(1, topk_indices(x, 5), 2.0 * SCALE**2),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_create_graph_gives_the_same_gradient_and_refuses_a_second_order(call: str) -> None:
    x = torch.randn(6, 12, generator=torch.Generator().manual_seed(1)).requires_grad_()
    # a square, so that the gradient reaching the kernels' backward is itself differentiable
    (plain,) = torch.autograd.grad(CALLS[call](x).square().sum(), x)
    (graphed,) = torch.autograd.grad(CALLS[call](x).square().sum(), x, create_graph=True)
    assert torch.equal(plain, graphed)
    assert plain.grad_fn is None and graphed.requires_grad
    if call in SECOND_ORDER and not native_enabled():  # torch's operations: a real second order
        (second,) = torch.autograd.grad(graphed.sum(), x)
        assert torch.equal(second, SECOND_ORDER[call](x.detach()))
        return
    with pytest.raises(RuntimeError, match="differentiate twice"):
        graphed.sum().backward()
