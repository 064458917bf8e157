"""The sparse encode/decode path equals the dense one (values and every gradient), on small shapes."""

import pytest
import torch
import torch.nn.functional as F

from ksparse_pl.functional import keep_winners, sparse_coding, sparse_decode, topk_encode


def dense_step(x, w_enc, b_enc, w_dec_rows, b_dec, k, relu):
    pre = F.linear(x, w_enc, b_enc)
    indices = pre.detach().topk(k, dim=1).indices
    code = keep_winners(pre, indices, relu=relu)  # (B, M) dense code
    return F.linear(code, w_dec_rows.t(), b_dec)


def sparse_step(x, w_enc, b_enc, w_dec_rows, b_dec, k, relu):
    values, indices = topk_encode(x, w_enc, b_enc, k, relu=relu)
    return sparse_decode(values, indices, w_dec_rows, b_dec)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["native kernels", "torch ops"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(("batch", "d", "m", "k"), [(7, 5, 20, 3), (32, 16, 64, 8), (64, 37, 300, 16)])
def test_sparse_path_equals_dense_path(batch: int, d: int, m: int, k: int, relu: bool, dtype: torch.dtype) -> None:
    shapes = [(batch, d), (m, d), (m,), (m, d), (d,)]
    params = [torch.randn(shape, dtype=dtype) for shape in shapes]
    results = []
    for step in (dense_step, sparse_step):
        leaves = [p.clone().requires_grad_() for p in params]
        out = step(*leaves, k, relu)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        results.append((out.detach(), [leaf.grad for leaf in leaves]))
    (dense_out, dense_grads), (sparse_out, sparse_grads) = results
    # float32: the sums run in another order than the dense matmuls'
    tolerance = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {}
    torch.testing.assert_close(sparse_out, dense_out, **tolerance)
    for name, a, b in zip(("x", "w_enc", "b_enc", "w_dec", "b_dec"), sparse_grads, dense_grads, strict=True):
        torch.testing.assert_close(a, b, msg=name, **tolerance)


def test_encoder_gradient_touches_only_selected_rows() -> None:
    x, w, b = torch.randn(4, 6), torch.randn(50, 6, requires_grad=True), torch.zeros(50, requires_grad=True)
    values, indices = topk_encode(x, w, b, k=2)
    values.sum().backward()
    touched = torch.zeros(50, dtype=torch.bool)
    touched[indices.unique()] = True
    assert (w.grad[~touched] == 0).all() and (w.grad[touched] != 0).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["native kernels", "torch ops"])
def test_encoder_backward_computes_only_the_gradients_asked_for(dtype: torch.dtype, monkeypatch) -> None:
    x, w, b = torch.randn(9, 6, dtype=dtype), torch.randn(40, 6, dtype=dtype), torch.randn(40, dtype=dtype)
    upstream = torch.linspace(-1, 1, 9 * 3, dtype=dtype).view(9, 3)

    def grads(*wanted: torch.Tensor) -> list[torch.Tensor]:
        leaves = [t.clone().requires_grad_(any(t is u for u in wanted)) for t in (x, w, b)]
        values, _ = topk_encode(*leaves, k=3)
        values.backward(upstream)
        return [leaf.grad for leaf in leaves]

    everything = grads(x, w, b)
    gathers: list[str] = []

    def counted(function, name):
        def run(*args, **kwargs):
            gathers.append(name)
            return function(*args, **kwargs)

        return run

    monkeypatch.setattr(sparse_coding, "gather_rows", counted(sparse_coding.gather_rows, "kernel"))
    monkeypatch.setattr(F, "embedding_bag", counted(F.embedding_bag, "torch"))
    x_grad, w_grad, b_grad = grads(w)  # an autoencoder's data needs no gradient; here the bias is frozen too
    assert x_grad is None and b_grad is None and not gathers
    assert torch.equal(w_grad, everything[1])
    assert torch.equal(grads(x)[0], everything[0]) and len(gathers) == 1
