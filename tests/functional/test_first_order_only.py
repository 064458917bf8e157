"""The kernels' backward passes: first-order gradients with or without create_graph, and no silent second order."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from ksparse_pl.functional import k_sparse, keep_winners, topk_indices
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


@pytest.mark.parametrize("call", list(CALLS))
def test_create_graph_gives_the_same_gradient_and_refuses_a_second_order(call: str) -> None:
    x = torch.randn(6, 12, generator=torch.Generator().manual_seed(1)).requires_grad_()
    # a square, so that the gradient reaching the kernels' backward is itself differentiable
    (plain,) = torch.autograd.grad(CALLS[call](x).square().sum(), x)
    (graphed,) = torch.autograd.grad(CALLS[call](x).square().sum(), x, create_graph=True)
    assert torch.equal(plain, graphed)
    assert plain.grad_fn is None and graphed.requires_grad
    with pytest.raises(RuntimeError, match="differentiate twice"):
        graphed.sum().backward()
