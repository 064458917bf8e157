import pytest
import torch

from ksparse_pl.functional import (
    k_sparse,
    keep_masked,
    keep_winners,
    select_and_keep,
    selection_scores,
    threshold_mask,
    topk_indices,
    winner_indices,
)


def reference_k_sparse(x: torch.Tensor, k: int, by_magnitude: bool = False, relu: bool = False) -> torch.Tensor:
    """Slow, obviously correct: sort each row and keep the first k positions."""
    out = torch.zeros_like(x)
    for r, row in enumerate(x):
        order = sorted(range(len(row)), key=lambda j: -(abs(row[j]) if by_magnitude else row[j]).item())
        for j in order[:k]:
            out[r, j] = max(row[j], 0) if relu else row[j]
    return out


@pytest.mark.parametrize("k", [1, 3, 10], ids=lambda k: f"k={k}")
@pytest.mark.parametrize("by_magnitude", [False, True], ids=["by_value", "by_magnitude"])
@pytest.mark.parametrize("relu", [False, True], ids=["signed", "relu"])
def test_k_sparse_matches_reference(k: int, by_magnitude: bool, relu: bool) -> None:
    x = torch.randn(6, 10)
    expected = reference_k_sparse(x, k, by_magnitude, relu)
    torch.testing.assert_close(k_sparse(x, k, by_magnitude=by_magnitude, relu=relu), expected)


def test_exactly_k_winners_with_ties() -> None:
    x = torch.ones(4, 9)
    x[1, :] = 0.0
    out = k_sparse(x, 3)
    indices = topk_indices(selection_scores(x), 3)
    assert indices.shape == (4, 3)
    assert ((out != 0).sum(dim=1)[[0, 2, 3]] == 3).all()
    # The same tied input always picks the same winners.
    torch.testing.assert_close(k_sparse(x, 3), out)


def test_threshold_mode_keeps_ties() -> None:
    x = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0]])
    assert threshold_mask(x, 2).tolist() == [[True, True, True, True, False]]


def test_keep_masked_zeroes_what_the_mask_leaves_out_even_infinite() -> None:
    x = torch.tensor([[3.0, -float("inf"), 2.0, float("inf")]], requires_grad=True)
    mask = torch.tensor([[True, False, False, True]])
    out = keep_masked(x, mask)
    assert out.tolist() == [[3.0, 0.0, 0.0, float("inf")]]  # x * mask would give NaN for the -inf
    out.backward(torch.full_like(out, float("inf")))
    assert x.grad.tolist() == [[float("inf"), 0.0, 0.0, float("inf")]]


def test_by_magnitude_keeps_signs() -> None:
    x = torch.tensor([[0.5, -3.0, 2.0, 1.0]])
    assert k_sparse(x, 2, by_magnitude=True).tolist() == [[0.0, -3.0, 2.0, 0.0]]


def test_relu_drops_negative_winners() -> None:
    x = torch.tensor([[-0.5, -3.0, -2.0, 1.0]])
    assert k_sparse(x, 2, relu=True).tolist() == [[0.0, 0.0, 0.0, 1.0]]


def test_gradient_only_through_winners() -> None:
    x = torch.tensor([[0.5, -3.0, 2.0, 1.0]], requires_grad=True)
    (k_sparse(x, 2) * torch.tensor([10.0, 20.0, 30.0, 40.0])).sum().backward()
    assert x.grad.tolist() == [[0.0, 0.0, 30.0, 40.0]]


def test_dim_argument() -> None:
    x = torch.randn(3, 7, 5)
    torch.testing.assert_close(k_sparse(x, 2, dim=1), k_sparse(x.transpose(1, 2), 2).transpose(1, 2))


def test_nan_is_never_dropped() -> None:
    x = torch.tensor([[1.0, float("nan"), 0.5, 0.2]])
    assert k_sparse(x, 1).isnan().any()
    assert keep_masked(x, threshold_mask(x, 1)).isnan().any()


@pytest.mark.parametrize("k", [0, -1, 5, 2.0, True], ids=repr)
def test_bad_k(k: object) -> None:
    with pytest.raises(ValueError, match=r"`k` to be an int in \[1, 4\].*" + repr(k).replace(".", r"\.")):
        k_sparse(torch.randn(2, 4), k)  # type: ignore[arg-type]


def test_integer_input() -> None:
    with pytest.raises(TypeError, match="floating-point.*torch.int64"):
        k_sparse(torch.ones(2, 4, dtype=torch.long), 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("by_magnitude", [False, True], ids=["by_value", "by_magnitude"])
@pytest.mark.parametrize("boosted", [False, True], ids=["plain", "boosted"])
def test_winner_indices_are_the_top_k_of_the_selection_scores(
    dtype: torch.dtype, by_magnitude: bool, boosted: bool
) -> None:
    # float32 on CPU: the kernel scores the rows itself; float64: torch's composition. Both sort the answer,
    # since only the kernel promises ascending order.
    x = torch.randn(7, 50, dtype=dtype)
    boost = 0.5 + torch.rand(50, dtype=dtype) if boosted else None
    scores = selection_scores(x, by_magnitude=by_magnitude, boost_factors=boost)
    expected = topk_indices(scores, 9).sort(-1).values
    got = winner_indices(x, 9, by_magnitude=by_magnitude, boost_factors=boost)
    assert torch.equal(got.sort(-1).values, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("relu", [False, True], ids=["signed", "relu"])
def test_grad_scale_of_sees_the_winners_and_scales_their_gradients(dtype: torch.dtype, relu: bool) -> None:
    # float32 on CPU asks for the factors inside the kernel path's autograd Function, float64 takes torch's ops
    x = torch.randn(6, 40, dtype=dtype, requires_grad=True)
    calls = []

    def scale_of(indices: torch.Tensor, counts: torch.Tensor | None) -> torch.Tensor:
        calls.append((indices.clone(), counts, torch.is_grad_enabled()))
        return 1.0 + indices.to(dtype) / 10  # a different factor for each winning unit

    out, indices, counts = select_and_keep(x, 5, relu=relu, counts=True, grad_scale_of=scale_of)
    assert len(calls) == 1
    seen_indices, seen_counts, grad_enabled = calls[0]
    assert torch.equal(seen_indices, indices) and seen_counts is counts and not grad_enabled
    assert torch.equal(out, k_sparse(x, 5, relu=relu))  # the forward is unchanged
    grad_out = torch.randn(6, 40, dtype=dtype)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    winners = x.detach().gather(1, indices)
    through = grad_out.gather(1, indices) * (1.0 + indices.to(dtype) / 10) * ((winners > 0) if relu else 1)
    torch.testing.assert_close(grad, torch.zeros_like(grad).scatter(1, indices, through), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_a_winner_relu_zeroed_passes_no_gradient_whatever_its_factor_and_gradient(dtype: torch.dtype) -> None:
    # As torch's ReLU: 0 where x <= 0, even for an infinite or NaN incoming gradient (not 0 * inf = NaN).
    x = torch.tensor([[-1.0, -3.0, 2.0, -2.0], [0.5, 1.5, -0.5, 3.0]], dtype=dtype, requires_grad=True)
    out, indices, _ = select_and_keep(x, 3, relu=True, grad_scale_of=lambda i, c: torch.full(i.shape, 2.0))
    assert indices.sort(-1).values.tolist() == [[0, 2, 3], [0, 1, 3]]
    grad_out = torch.tensor([[float("inf"), 1.0, 1.0, float("nan")], [1.0, 1.0, 1.0, 1.0]], dtype=dtype)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    assert grad.tolist() == [[0.0, 0.0, 2.0, 0.0], [2.0, 2.0, 0.0, 2.0]]
    for scale, passed in ((None, 1.0), (torch.full(indices.shape, 3.0, dtype=dtype), 3.0)):
        (grad,) = torch.autograd.grad(keep_winners(x, indices, relu=True, grad_scale=scale), x, grad_out)
        assert grad.tolist() == [[0.0, 0.0, passed, 0.0], [passed, passed, 0.0, passed]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_grad_scale_of_must_give_one_factor_per_winner(dtype: torch.dtype) -> None:
    x = torch.randn(2, 8, dtype=dtype)
    with pytest.raises(ValueError, match=r"`grad_scale_of` must .* indices \(2, 3\), but returned shape \(3,\)"):
        select_and_keep(x, 3, grad_scale_of=lambda indices, counts: torch.ones(3))
    with pytest.raises(ValueError, match="but returned float"):
        select_and_keep(x, 3, grad_scale_of=lambda indices, counts: 2.0)  # type: ignore[arg-type,return-value]


# each path of select_and_keep: the row kernel, the channel kernel, the row kernel on a moved dim, torch's ops
PATHS = {
    "rows": (lambda: torch.randn(6, 40), -1),
    "channels of a map": (lambda: torch.randn(3, 12, 4, 5), 1),
    "a dim moved last": (lambda: torch.randn(40, 6), 0),
    "torch (float64)": (lambda: torch.randn(6, 40, dtype=torch.float64), -1),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_without_indices_the_output_counts_and_gradients_are_the_same(path: str) -> None:
    torch.manual_seed(0)
    make, dim = PATHS[path]
    x = make().requires_grad_()
    grad_out = torch.randn(x.shape, dtype=x.dtype)
    seen = []
    out, indices, counts = select_and_keep(x, 3, dim=dim, relu=True, counts=True)
    out_without, none, counts_without = select_and_keep(
        x, 3, dim=dim, relu=True, counts=True, indices=False, grad_scale_of=lambda i, c: seen.append((i, c))
    )
    assert none is None and indices is not None
    assert len(seen) == 1 and seen[0][0] is None and torch.equal(seen[0][1], counts)
    assert torch.equal(out_without, out) and torch.equal(counts_without, counts)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    (grad_without,) = torch.autograd.grad(out_without, x, grad_out)
    assert torch.equal(grad_without, grad)


@pytest.mark.parametrize("path", list(PATHS))
def test_gradient_factors_without_indices_are_refused(path: str) -> None:
    make, dim = PATHS[path]
    with pytest.raises(ValueError, match="with `indices=False` there are no winners"):
        select_and_keep(make(), 3, dim=dim, indices=False, grad_scale_of=lambda i, c: torch.ones(1))


# per_sample on each path: the row kernel, the channel kernel, the row kernel on a moved dim (a channels-last map),
# torch's ops; maps of few positions, so that some channels win nowhere in a sample
PER_SAMPLE_PATHS = {
    "rows": (lambda: torch.randn(6, 40), -1),
    "channels of a map": (lambda: torch.randn(3, 12, 2, 3), 1),
    "channels of a channels-last map": (
        lambda: torch.randn(3, 12, 2, 3).contiguous(memory_format=torch.channels_last),
        1,
    ),
    "torch (float64)": (lambda: torch.randn(3, 12, 2, 3, dtype=torch.float64), 1),
}


@pytest.mark.parametrize("path", list(PER_SAMPLE_PATHS))
def test_per_sample_counts_and_factors_are_the_winners_by_sample(path: str) -> None:
    torch.manual_seed(0)
    make, dim = PER_SAMPLE_PATHS[path]
    x = make().requires_grad_()
    n = x.shape[dim]
    factors = 0.5 + torch.rand(x.shape[0], n, dtype=x.dtype)
    grad_out = torch.randn(x.shape, dtype=x.dtype)
    seen = []

    def per_sample_scale_of(indices: torch.Tensor | None, counts: torch.Tensor | None) -> torch.Tensor:
        seen.append((indices, counts))
        assert counts is not None
        return factors.masked_fill(counts == 0, float("inf"))  # where nothing won, a factor that must not matter

    def per_winner_scale_of(indices: torch.Tensor | None, counts: torch.Tensor | None) -> torch.Tensor:
        assert indices is not None
        moved = indices.movedim(dim, -1)
        return factors.gather(1, moved.reshape(moved.shape[0], -1)).view_as(moved).movedim(-1, dim)

    out, none, counts = select_and_keep(
        x, 2, dim=dim, relu=True, counts=True, indices=False, per_sample=True, grad_scale_of=per_sample_scale_of
    )
    out_ref, indices, _ = select_and_keep(x, 2, dim=dim, relu=True, grad_scale_of=per_winner_scale_of)
    assert none is None and indices is not None and len(seen) == 1 and seen[0][0] is None and seen[0][1] is counts
    won = torch.zeros(x.shape, dtype=torch.int64).scatter(dim, indices, 1)
    assert torch.equal(counts, won.movedim(dim, -1).reshape(x.shape[0], -1, n).sum(1))
    assert (counts == 0).any()  # the case the infinite factors test
    assert torch.equal(out, out_ref)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    (grad_ref,) = torch.autograd.grad(out_ref, x, grad_out)
    assert torch.equal(grad, grad_ref)


def test_per_sample_needs_a_sample_dim_apart_from_the_units() -> None:
    with pytest.raises(ValueError, match=r"`per_sample=True`.*shape \(40,\) and dim=-1"):
        select_and_keep(torch.randn(40), 3, per_sample=True)
    with pytest.raises(ValueError, match=r"`per_sample=True`.*shape \(40, 6\) and dim=0"):
        select_and_keep(torch.randn(40, 6), 3, dim=0, per_sample=True)
    with pytest.raises(ValueError, match=r"one factor per sample and index .*\(6, 40\), but returned shape \(6, 3\)"):
        select_and_keep(torch.randn(6, 40), 3, per_sample=True, grad_scale_of=lambda i, c: torch.ones(6, 3))
