"""The row kernels of the sparse autoencoder path against torch references, repeated rows and bad indices included."""

from __future__ import annotations

import pytest
import torch

from ksparse_pl.functional.native import native_enabled
from ksparse_pl.functional.native_rows import dot_rows, gather_rows, scatter_rows

pytestmark = pytest.mark.skipif(not native_enabled(), reason="no C compiler to build the kernels")


def problem(batch: int = 40, k: int = 6, m: int = 25, d: int = 19, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, m, (batch, k), generator=g)  # repeats within and across samples
    rows, coef = torch.randn(m, d, generator=g), torch.randn(batch, k, generator=g)
    return rows, indices, coef, torch.randn(batch, d, generator=g)


def test_gather_is_a_weighted_sum_of_rows() -> None:
    rows, indices, coef, _ = problem()
    expected = (coef.unsqueeze(-1).double() * rows.double()[indices]).sum(1)
    torch.testing.assert_close(gather_rows(rows, indices, coef).double(), expected, rtol=1e-5, atol=1e-5)


def test_dot_is_each_selected_row_times_the_sample() -> None:
    rows, indices, _, src = problem()
    expected = (rows.double()[indices] * src.double().unsqueeze(1)).sum(-1)
    torch.testing.assert_close(dot_rows(rows, indices, src).double(), expected, rtol=1e-5, atol=1e-5)


def test_scatter_sums_every_pair_into_its_row_and_zeroes_the_rest() -> None:
    _, indices, coef, src = problem(batch=12, k=3, m=50)
    assert indices.unique().numel() < indices.numel()  # some rows take several terms
    expected = torch.zeros(50, 19, dtype=torch.float64)
    for b in range(indices.shape[0]):
        for j in range(indices.shape[1]):
            expected[indices[b, j]] += coef[b, j].double() * src[b].double()
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[indices.unique()] = False
    assert untouched.any()
    # The kernel writes each output row once instead of zeroing the output first. Memory full of NaN, freed
    # just before, is what the allocator most often hands it next, so the rows no pair selects must be zeroed.
    for _ in range(5):
        torch.full((50, 19), float("nan"))  # freed at once
        out = scatter_rows(src, indices, coef, 50)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
        assert (out[untouched] == 0).all()


def test_scatter_sums_each_row_in_sample_order() -> None:
    # In float32, (1 + 1e8) - 1e8 = 0 but 1 + (1e8 - 1e8) = 1: the three samples' terms land in row 1 in
    # sample order, whichever pairs the other rows take and however the pairs are sorted by row.
    src = torch.tensor([[1.0, 2.0], [1e8, 3.0], [-1e8, 4.0]])
    indices = torch.tensor([[1, 0], [2, 1], [1, 0]])
    out = scatter_rows(src, indices, torch.ones(3, 2), 3)
    assert out[1, 0].item() == 0.0 and out[1, 1].item() == 9.0
    assert out[0].tolist() == [-1e8, 6.0] and out[2].tolist() == [1e8, 3.0]  # 1 - 1e8 rounds to -1e8


def test_results_do_not_depend_on_the_number_of_threads() -> None:
    rows, indices, coef, src = problem(batch=256, k=32, m=4096, d=64)
    threads = torch.get_num_threads()

    def results() -> list[torch.Tensor]:
        return [gather_rows(rows, indices, coef), dot_rows(rows, indices, src), scatter_rows(src, indices, coef, 4096)]

    try:
        torch.set_num_threads(1)
        single = results()
        torch.set_num_threads(max(threads, 2))
        many = results()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(single, many, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [25, -1])
def test_an_index_outside_the_rows_raises(bad: int) -> None:
    rows, indices, coef, src = problem()
    indices[3, 2] = bad
    for call in (
        lambda: gather_rows(rows, indices, coef),
        lambda: dot_rows(rows, indices, src),
        lambda: scatter_rows(src, indices, coef, 25),
    ):
        with pytest.raises(IndexError, match=r"outside \[0, 25\)"):
            call()
