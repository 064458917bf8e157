"""The compiled CPU top-k kernel against torch.topk, its tie and NaN rules, and the fallback without it."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import time
from itertools import product

import numpy as np
import pytest
import torch

from ksparse_pl.functional import k_sparse, keep_masked, keep_winners, threshold_keep, threshold_mask, topk_indices
from ksparse_pl.functional.native import (
    _CSRC,
    _FLAGS,
    KERNEL_WIDTHS,
    UNUSED_BUILD_DAYS,
    _build,
    _widest_allowed,
    native_enabled,
    use_widest_kernels,
)
from ksparse_pl.functional.native_topk import (
    keep_at_least_rows,
    select_rows,
    take_bits_rows,
    take_bits_rows_at,
    take_rows,
)
from ksparse_pl.functional.selection import select_and_keep

pytestmark = pytest.mark.skipif(not native_enabled(), reason="no C compiler to build the kernel")


def reference_winners(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Winners by the kernel's rule, computed slowly: stable descending sort, so ties go to lower indices."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return order[..., :k].sort(dim=-1).values


def topk_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    return select_rows(scores, k).indices


def unpacked(bits: torch.Tensor, n: int) -> torch.Tensor:
    """The ``(rows, n)`` booleans packed in ``bits`` (bit ``i % 8`` of byte ``i // 8``); the spare bits must be 0."""
    every = bits.unsqueeze(-1).bitwise_right_shift(torch.arange(8, dtype=torch.uint8)).bitwise_and(1).bool()
    every = every.flatten(-2)
    assert not every[:, n:].any(), "a bit past the row's last entry is set"
    return every[:, :n]


def passing(x: torch.Tensor, winners: torch.Tensor, relu: bool) -> torch.Tensor:
    """Where the gradient of the sparse output passes: at the winners, and with relu not where x <= 0 (NaN does)."""
    won = torch.zeros(x.shape, dtype=torch.bool).scatter(-1, winners, True)
    return won & ~(x <= 0) if relu else won


ROWS = {
    "normal": lambda b, n: torch.randn(b, n),
    "relu (ties at zero)": lambda b, n: torch.randn(b, n).relu(),
    "lognormal": lambda b, n: torch.randn(b, n).exp(),
    "uniform": lambda b, n: torch.rand(b, n),
    "small integers (ties)": lambda b, n: torch.randint(0, 5, (b, n)).float(),
    "rows on different scales": lambda b, n: torch.randn(b, n) * torch.rand(b, 1) * 100 + torch.randn(b, 1) * 50,
    "huge and tiny magnitudes": lambda b, n: torch.randn(b, n) * 10.0 ** torch.randint(-30, 30, (b, n)).float(),
    # 1% outliers inflate the std, so fewer than 2k scores pass the kernel's compaction threshold
    "a few large outliers": lambda b, n: torch.randn(b, n) + (torch.rand(b, n) < 0.01) * torch.randn(b, n) * 50,
    "constant": lambda b, n: torch.full((b, n), 0.25),
    "NaN and infinities": lambda b, n: (
        torch.randn(b, n).masked_fill(torch.rand(b, n) < 0.02, float("nan"))
        * torch.where(torch.rand(b, n) < 0.02, float("inf"), 1.0)
    ),
}


@pytest.mark.parametrize("rows", list(ROWS))
@pytest.mark.parametrize(("n", "k"), [(4096, 205), (1000, 100), (513, 128), (37, 1), (37, 36), (9, 9), (1, 1)])
def test_same_winners_and_output_as_a_stable_sort(rows: str, n: int, k: int) -> None:
    torch.manual_seed(n + k)
    scores = ROWS[rows](16, n)
    winners = reference_winners(scores, k)
    result = select_rows(scores, k, output=True)
    assert torch.equal(result.indices, winners)
    expected = torch.zeros_like(scores).scatter(1, winners, scores.gather(1, winners))
    torch.testing.assert_close(result.output, expected, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(unpacked(result.bits, n), passing(scores, winners, relu=False))
    # without writing the winners out (a buffer of the kernel's own holds them): the same output, bits, counts
    without = select_rows(scores, k, output=True, counts=True, indices=False)
    assert without.indices is None
    torch.testing.assert_close(without.output, expected, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(without.bits, result.bits)
    assert torch.equal(without.counts, torch.bincount(winners.reshape(-1), minlength=n))


@pytest.mark.parametrize("rows", ["normal", "relu (ties at zero)", "NaN and infinities"])
@pytest.mark.parametrize("by_magnitude", [False, True])
@pytest.mark.parametrize("boosted", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_scores_output_and_counts_in_one_pass(rows: str, by_magnitude: bool, boosted: bool, relu: bool) -> None:
    torch.manual_seed(1)
    x = ROWS[rows](24, 700)
    boost = torch.rand(700) * 2 if boosted else None
    scores = x.abs() if by_magnitude else x
    if boost is not None:
        scores = scores * boost
    winners = reference_winners(scores, 35)
    values = x.gather(1, winners)
    expected = torch.zeros_like(x).scatter(1, winners, values.clamp(min=0) if relu else values)

    result = select_rows(x, 35, boost=boost, by_magnitude=by_magnitude, output=True, relu=relu, counts=True)
    assert torch.equal(result.indices, winners)
    torch.testing.assert_close(result.output, expected, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(result.counts, torch.bincount(winners.reshape(-1), minlength=700))
    assert torch.equal(unpacked(result.bits, 700), passing(x, winners, relu))
    plain = select_rows(x, 35, boost=boost, by_magnitude=by_magnitude)
    assert plain.output is None and plain.counts is None and plain.bits is None
    assert torch.equal(plain.indices, winners)


@pytest.fixture(params=KERNEL_WIDTHS)
def kernel_width(request: pytest.FixtureRequest):
    """The row kernels of one instruction set for the test, those of the run after it."""
    try:
        if use_widest_kernels(request.param) != request.param:
            pytest.skip(f"this CPU cannot run the {request.param} kernels")
        yield request.param
    finally:
        use_widest_kernels(_widest_allowed())


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """float32 tensors equal bit for bit: NaN matches NaN, and -0.0 does not match 0.0."""
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


# Lengths around the vectors' 8 and 16 lanes and the output passes' 32- and 64-bit stores of the bits.
@pytest.mark.parametrize(("n", "k"), [(4096, 205), (1000, 100), (100, 10), (37, 5), (17, 3), (16, 4), (9, 2), (5, 2)])
def test_every_instruction_set_gives_the_reference_winners_output_bits_and_gradients(
    kernel_width: str, n: int, k: int
) -> None:
    torch.manual_seed(n)
    groups = 4 if n % 4 == 0 else 1  # a factor per group of entries, groups not whole bytes at n = 100
    for rows, by_magnitude, boosted, relu in product(ROWS.values(), [False, True], [False, True], [False, True]):
        x = rows(6, n)
        x[0] = (torch.randperm(n) - (n - k)).float()  # 0 is the k-th largest: a winner that relu stops
        boost = torch.rand(n) * 2 if boosted else None
        scores = x.abs() if by_magnitude else x
        scores = scores * boost if boost is not None else scores
        winners = reference_winners(scores, k)
        values = x.gather(1, winners)
        expected = torch.zeros_like(x).scatter(1, winners, values.clamp(min=0) if relu else values)
        result = select_rows(x, k, boost=boost, by_magnitude=by_magnitude, output=True, relu=relu, counts=True)
        assert torch.equal(result.indices, winners)
        assert identical(result.output, expected)
        assert torch.equal(result.counts, torch.bincount(winners.reshape(-1), minlength=n))
        passes = passing(x, winners, relu)
        assert torch.equal(unpacked(result.bits, n), passes)
        # Without the winners' ids wanted (a layer's training step): the threshold alone, or the winners where a
        # row needs them (row 0: relu winners at 0, which the bits do not count; ties; NaN and infinities).
        alone = select_rows(
            x, k, boost=boost, by_magnitude=by_magnitude, output=True, relu=relu, counts=True, indices=False
        )
        assert identical(alone.output, expected)
        assert torch.equal(alone.counts, result.counts) and torch.equal(alone.bits, result.bits)

        grad, factors = torch.randn(6, n), torch.rand(6, k) + 0.5
        assert identical(take_bits_rows(grad, result.bits), torch.where(passes, grad, 0.0))
        per_group = torch.rand(6, groups) + 0.5
        spread = per_group.repeat_interleave(n // groups, dim=1)
        assert identical(take_bits_rows(grad, result.bits, per_group), torch.where(passes, grad * spread, 0.0))
        at_winners = torch.zeros(6, n).scatter(1, winners, factors)
        scaled = take_bits_rows_at(grad, result.bits, winners, factors)
        assert identical(scaled, torch.where(passes, grad * at_winners, 0.0))

        kept, bits, counts = keep_at_least_rows(x, k, boost=boost, by_magnitude=by_magnitude, relu=relu, counts=True)
        mask = threshold_mask(scores, k)
        assert identical(kept, torch.where(mask, x.clamp(min=0) if relu else x, 0.0))
        assert torch.equal(unpacked(bits, n), mask & ~(x <= 0) if relu else mask)
        assert torch.equal(counts, mask.sum(0))


# The kernel aims each row's search where the rows before it in the call had their k-th score (in deviations above
# their means), and compacts the row just below that: a block of rows unlike the ones before leaves some rows with
# fewer than k candidates, or a compaction threshold outside the row; exact copies narrow the margin to its least.
ROW_SEQUENCES = {
    "blocks of four shapes": lambda n: torch.cat(
        [ROWS[name](64, n) for name in ("normal", "lognormal", "a few large outliers", "uniform")]
    ),
    "two shapes alternating": lambda n: torch.stack([ROWS["normal"](128, n), ROWS["lognormal"](128, n)], 1).view(-1, n),
    "scaled and shifted copies of one row": lambda n: (
        torch.randn(1, n) * (torch.rand(256, 1) + 0.5) + torch.randn(256, 1)
    ),
}


@pytest.mark.parametrize("sequence", list(ROW_SEQUENCES))
@pytest.mark.parametrize("k", [5, 20, 256])
def test_rows_unlike_the_rows_before_them_get_their_exact_winners(kernel_width: str, sequence: str, k: int) -> None:
    torch.manual_seed(k)
    x = ROW_SEQUENCES[sequence](1024)
    winners = reference_winners(x, k)
    expected = torch.zeros_like(x).scatter(1, winners, x.gather(1, winners))
    alone = select_rows(x, k, output=True, counts=True, indices=False)
    assert identical(alone.output, expected)
    assert torch.equal(alone.counts, torch.bincount(winners.reshape(-1), minlength=1024))
    assert torch.equal(select_rows(x, k).indices, winners)
    boost = torch.rand(1024) + 0.5
    assert torch.equal(select_rows(x, k, boost=boost).indices, reference_winners(x * boost, k))
    by_magnitude = select_rows(x, k, by_magnitude=True, output=True, relu=True, indices=False)
    kept = x.gather(1, reference_winners(x.abs(), k)).clamp(min=0)
    assert identical(by_magnitude.output, torch.zeros_like(x).scatter(1, reference_winners(x.abs(), k), kept))
    threshold_kept, _, _ = keep_at_least_rows(x, k, boost=boost)
    assert identical(threshold_kept, torch.where(threshold_mask(x * boost, k), x, 0.0))


@pytest.mark.parametrize("relu", [False, True])
def test_win_counts_over_hundreds_of_rows_count_every_win(kernel_width: str, relu: bool) -> None:
    # More rows per thread than a byte counts (the AVX2 and AVX-512 kernels count the wins from the bits, 255 rows
    # at a time), a unit that wins in every row, rows that end inside a vector of bits, rows of ties, and rows whose
    # winners relu stops (no bit for them); in select_rows and in threshold mode.
    torch.manual_seed(5)
    x = torch.randn(1200, 1000)
    x[1::11] = torch.randint(0, 3, (len(range(1, 1200, 11)), 1000)).float()
    x[2::7] -= 10.0
    x[:, 3] = 100.0
    winners = reference_winners(x, 50)
    result = select_rows(x, 50, output=True, relu=relu, counts=True)
    assert torch.equal(result.indices, winners)
    assert result.counts[3] == 1200
    assert torch.equal(result.counts, torch.bincount(winners.reshape(-1), minlength=1000))
    _, _, kept = keep_at_least_rows(x, 50, relu=relu, counts=True)  # threshold mode: the ties kept count too
    assert torch.equal(kept, threshold_mask(x, 50).sum(0))


def test_a_width_that_is_not_an_instruction_set_is_refused(monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"`widest` in \('portable', 'avx2', 'avx512'\), but got 'sse9'"):
        use_widest_kernels("sse9")
    monkeypatch.setenv("KSPARSE_PL_CPU_KERNELS", "AVX2")
    with pytest.raises(ValueError, match=r"KSPARSE_PL_CPU_KERNELS: expected one of .*, but got 'AVX2'"):
        _widest_allowed()


@pytest.mark.parametrize("relu", [False, True])
def test_the_gradient_bits_of_tied_rows_are_written_whole(relu: bool) -> None:
    # A tie at the k-th score leaves no threshold that separates the winners, so their bits are set one by
    # one; the rest of the row must be cleared, whatever the memory held before (here: freed memory of ones,
    # what the allocator most often hands out next), and with relu a winner <= 0 passes no gradient.
    x = torch.tensor([[2.0, -1.0, 0.0, -1.0, 3.0, -1.0, -1.0, 1.0, -1.0, -2.0, -1.0] * 3] * 4)
    winners = reference_winners(x, 15)  # the nine positive entries, the three zeros and three of the eighteen -1
    assert (x.gather(1, winners) == -1).sum(1).tolist() == [3] * 4
    for _ in range(5):
        torch.full((4, 5), 255, dtype=torch.uint8)  # freed at once
        result = select_rows(x, 15, output=True, relu=relu)
        assert torch.equal(result.indices, winners)
        assert torch.equal(unpacked(result.bits, 33), passing(x, winners, relu))


def test_boost_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"boost.*\(5,\)"):
        select_rows(torch.randn(2, 5), 2, boost=torch.ones(4))
    with pytest.raises(ValueError, match=r"keep_at_least_rows: expected a CPU `boost` of shape \(5,\)"):
        keep_at_least_rows(torch.randn(2, 5), 2, boost=torch.ones(4))


def test_gradient_bits_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ValueError, match=r"uint8 `bits` of shape \(2, 1\), but got torch.uint8 \(2, 2\)"):
        take_bits_rows(torch.randn(2, 5), torch.zeros(2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"take_bits_rows_at: expected contiguous uint8 `bits` of shape \(2, 1\)"):
        take_bits_rows_at(
            torch.randn(2, 5), torch.zeros(2, 2, dtype=torch.uint8), torch.zeros(2, 1).long(), torch.ones(2, 1)
        )


def packed(keep: torch.Tensor) -> torch.Tensor:
    """``(rows, n)`` booleans as the kernels' bits: bit ``i % 8`` of byte ``i // 8``, spare bits 0."""
    return torch.from_numpy(np.packbits(keep.numpy(), axis=-1, bitorder="little"))


@pytest.mark.parametrize("shape", [(4, 37), (2, 3, 64)], ids=["rows", "leading-dims"])
def test_take_bits_at_scales_the_kept_entries_at_the_indices_by_their_factors(shape: tuple[int, ...]) -> None:
    torch.manual_seed(len(shape))
    src = torch.randn(shape)
    keep = torch.rand(shape) < 0.5
    indices = torch.rand(shape).argsort(-1)[..., :6]  # distinct per row, in no order, kept or not
    factors = 0.5 + torch.rand(indices.shape)
    factors[~keep.gather(-1, indices)] = float("inf")  # a cleared entry stays 0, not 0 * inf
    assert (~keep.gather(-1, indices)).any() and keep.gather(-1, indices).any()
    bits = packed(keep.reshape(-1, shape[-1]))
    expected = torch.where(keep, src * torch.ones(shape).scatter(-1, indices, factors), 0.0)
    assert torch.equal(take_bits_rows_at(src, bits, indices, factors), expected)
    assert torch.equal(take_bits_rows_at(src, bits, indices, factors.double()), expected)  # applied in float32


def test_take_bits_at_refuses_indices_and_factors_that_do_not_fit() -> None:
    src, bits = torch.randn(2, 10), torch.zeros(2, 2, dtype=torch.uint8)
    with pytest.raises(IndexError, match=r"take_bits_rows_at: an index in `indices` is outside \[0, 10\)"):
        take_bits_rows_at(src, bits, torch.tensor([[1, 10], [0, 2]]), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"int64 CPU `indices` shaped \(2, 2\), but got torch.int32"):
        take_bits_rows_at(src, bits, torch.tensor([[1, 3], [0, 2]], dtype=torch.int32), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"`factors` shaped like `indices` \(2, 2\), but got \(2, 3\)"):
        take_bits_rows_at(src, bits, torch.tensor([[1, 3], [0, 2]]), torch.ones(2, 3))


@pytest.mark.parametrize("relu", [False, True])
def test_select_and_keep_matches_the_composition_and_the_torch_path(relu: bool) -> None:
    torch.manual_seed(2)
    x = torch.randn(16, 300, dtype=torch.float64).float().requires_grad_()
    boost = torch.rand(300) + 0.5
    out, indices, counts = select_and_keep(x, 20, boost_factors=boost, by_magnitude=True, relu=relu, counts=True)
    grad_out = torch.randn(16, 300)
    (grad,) = torch.autograd.grad(out, x, grad_out)

    expected_indices = topk_indices(x.detach().abs() * boost, 20)
    expected = keep_winners(x, expected_indices, relu=relu)
    (expected_grad,) = torch.autograd.grad(expected, x, grad_out)
    assert torch.equal(indices, expected_indices)
    assert torch.equal(counts, torch.bincount(expected_indices.reshape(-1), minlength=300))
    assert torch.equal(out, expected) and torch.equal(grad, expected_grad)

    # float64 takes torch.topk: the same winners (no ties here), in torch's order
    out64, indices64, counts64 = select_and_keep(
        x.double(), 20, boost_factors=boost.double(), by_magnitude=True, relu=relu, counts=True
    )
    assert torch.equal(indices64.sort(dim=1).values, indices)
    assert torch.equal(counts64, counts) and torch.equal(out64.float(), out)


def test_ties_go_to_the_lower_index_and_minus_zero_ties_with_zero() -> None:
    scores = torch.tensor([[1.0, 3.0, 1.0, 1.0, 0.0], [-0.0, 0.0, -1.0, 0.0, -0.0]])
    assert topk_rows(scores, 3).tolist() == [[0, 1, 2], [0, 1, 3]]


def test_nan_ranks_above_every_number_and_infinities_are_ordered() -> None:
    scores = torch.tensor([[1.0, float("nan"), float("inf"), 5.0, float("-inf"), -float("nan")]])
    assert topk_rows(scores, 3).tolist() == [[1, 2, 5]]
    assert topk_rows(scores, 5).tolist() == [[0, 1, 2, 3, 5]]


def test_leading_dims_and_non_contiguous_input() -> None:
    scores = torch.randn(3, 4, 64).transpose(0, 1)  # (4, 3, 64), not contiguous
    indices = topk_rows(scores, 5)
    assert indices.shape == (4, 3, 5)
    assert torch.equal(indices, reference_winners(scores, 5))


def test_topk_indices_uses_the_kernel_on_cpu_float32_last_dim() -> None:
    scores = torch.tensor([[2.0, 2.0, 2.0, 1.0]])
    assert topk_indices(scores, 2).tolist() == [[0, 1]]  # the kernel's order: ascending, ties to lower index
    assert set(topk_indices(scores.double(), 2)[0].tolist()) < {0, 1, 2}  # float64: torch.topk, any two of the tie


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_scale", [False, True])
def test_keep_winners_matches_the_gather_scatter_composition(relu: bool, with_scale: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 50, requires_grad=True)
    indices = topk_indices(x.detach(), 7)
    scale = torch.rand(8, 7) + 0.5 if with_scale else None
    out = keep_winners(x, indices, relu=relu, grad_scale=scale)
    grad_out = torch.randn(8, 50)
    (grad,) = torch.autograd.grad(out, x, grad_out)

    values = x.detach().gather(1, indices)
    expected = torch.zeros(8, 50).scatter(1, indices, values.relu() if relu else values)
    factor = (values > 0).float() if relu else torch.ones_like(values)
    if scale is not None:
        factor = factor * scale
    expected_grad = torch.zeros(8, 50).scatter(1, indices, grad_out.gather(1, indices) * factor)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)


@pytest.mark.parametrize("relu", [False, True])
def test_take_rows_keeps_only_the_indexed_entries_and_their_gradient_bits(relu: bool) -> None:
    src = torch.arange(12.0).view(2, 6) - 5  # [[-5 .. 0], [1 .. 6]]
    indices = torch.tensor([[0, 5], [2, 1]])
    torch.full((2, 1), 255, dtype=torch.uint8)  # freed at once: the bits must not keep what memory held
    out, bits = take_rows(src, indices, relu=relu)
    assert out.tolist() == [[0.0 if relu else -5.0, 0, 0, 0, 0, 0], [0, 2.0, 3.0, 0, 0, 0]]
    # the gradient passes at the winners, but with relu not where x <= 0 (here the first row's -5 and 0)
    assert unpacked(bits, 6).tolist() == [[not relu, 0, 0, 0, 0, not relu], [0, 1, 1, 0, 0, 0]]


def test_batch_of_rows_equals_rows_one_at_a_time() -> None:
    torch.manual_seed(3)
    x = torch.randn(32, 300)
    whole = k_sparse(x, 30)
    one_by_one = torch.cat([k_sparse(row[None], 30) for row in x])
    assert torch.equal(whole, one_by_one)


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_without_a_compiler_the_layers_warn_once_and_use_torch_topk(tmp_path, monkeypatch) -> None:
    code = (
        "import warnings, torch\n"
        "from ksparse_pl.functional import k_sparse\n"
        "x = torch.tensor([[0.5, -3.0, 2.0, 1.0]])\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    print(k_sparse(x, 2).tolist(), k_sparse(x, 2).tolist())\n"
        "print(len(caught), caught[0].message if caught else '')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CC": str(tmp_path / "no-such-compiler")}
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    values, warning = result.stdout.splitlines()
    assert values == "[[0.0, 0.0, 2.0, 1.0]] [[0.0, 0.0, 2.0, 1.0]]"
    assert warning.startswith("1 ksparse_pl could not build its CPU kernels")


def test_the_library_is_built_once_into_the_cache(tmp_path) -> None:
    code = "from ksparse_pl.functional.native import native_enabled; print(native_enabled())"
    env = {"PATH": "/usr/bin:/bin", "KSPARSE_PL_CACHE": str(tmp_path)}
    assert run_python(code, env).stdout.strip() == "True"
    built = list(tmp_path.glob("kernels-*.so"))
    assert len(built) == 1
    inode = built[0].stat().st_ino
    os.utime(built[0], (0, 0))
    assert run_python(code, env).stdout.strip() == "True"
    assert built[0].stat().st_ino == inode  # not built again
    assert built[0].stat().st_mtime > time.time() - 600  # but marked as used
    assert run_python(code, {**env, "KSPARSE_PL_NATIVE": "0"}).stdout.strip() == "False"


def test_a_new_build_deletes_builds_unused_for_a_month(tmp_path) -> None:
    stale, recent = tmp_path / "kernels-0000000000000000.so", tmp_path / "kernels-1111111111111111.so"
    other = tmp_path / "notes.txt"
    for path in (stale, recent, other):
        path.write_bytes(b"")
    for path, days in ((stale, UNUSED_BUILD_DAYS + 1), (other, UNUSED_BUILD_DAYS + 1), (recent, UNUSED_BUILD_DAYS - 1)):
        os.utime(path, (time.time() - days * 86400,) * 2)
    code = "from ksparse_pl.functional.native import native_enabled; print(native_enabled())"
    assert run_python(code, {"PATH": "/usr/bin:/bin", "KSPARSE_PL_CACHE": str(tmp_path)}).stdout.strip() == "True"
    assert not stale.exists() and recent.exists() and other.exists()
    assert len(list(tmp_path.glob("kernels-*.so"))) == 2  # the recent one and the new build


def functions_leaving_vector_registers_dirty(disassembly: str) -> list[str]:
    """The exits (``ret``, or a jump into another function) of functions that use 256- or 512-bit registers, reached
    from such an instruction with no ``vzeroupper`` between them (read backwards in address order)."""
    dirty = []
    for block in re.split(r"\n(?=[0-9a-f]+ <[^>]+>:\n)", disassembly):
        header = re.match(r"[0-9a-f]+ <([^>]+)>:\n", block)
        if header is None:
            continue
        name = header.group(1)
        code = [line.split("\t", 1)[1].strip() for line in block.splitlines()[1:] if "\t" in line]
        wide = [re.search(r"%[yz]mm", instruction) is not None for instruction in code]
        for i, instruction in enumerate(code):
            jump = re.match(r"jmp\s+[0-9a-f]+ <([^>+]+)>", instruction)
            if not (instruction.startswith("ret") or (jump is not None and jump.group(1) != name)):
                continue
            for before in reversed(range(i)):
                if code[before].startswith("vzeroupper"):
                    break
                if wide[before]:
                    dirty.append(f"{name}: {instruction}")
                    break
    return dirty


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or shutil.which("objdump") is None,
    reason="reads the x86-64 disassembly with objdump",
)
def test_no_kernel_returns_with_the_vector_registers_dirty() -> None:
    # Left dirty, the upper halves of the vector registers made the scalar SSE code that ran after the row kernel
    # (the sensitivity step's) take 2.7 times as long on Zen 5: GCC leaves out vzeroupper before a tail call.
    disassembly = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(_build())], capture_output=True, text=True, check=True
    ).stdout
    assert "vzeroupper" in disassembly  # the AVX2 kernels are there to check
    assert functions_leaving_vector_registers_dirty(disassembly) == []


# Where every CPU has FMA (ARM), or told that it does (x86-64), a compiler may fuse a * b + c.
FMA_FLAGS = {"x86_64": ["-mfma"], "AMD64": ["-mfma"], "aarch64": [], "arm64": []}


@pytest.mark.skipif(platform.machine() not in FMA_FLAGS, reason="reads x86-64 or ARM assembly")
@pytest.mark.parametrize("source", ["duty_cycle.c", "selection_history.c"])
def test_the_kernels_that_repeat_torchs_arithmetic_have_no_fused_multiply_adds(source: str, tmp_path) -> None:
    # Fused, the duty cycles and sensitivity factors would no longer equal torch's to the bit: the build's flags
    # must forbid it (clang for ARM fused 2 and 8 of them without).
    assembly = tmp_path / "kernel.s"
    compiler = os.environ.get("CC", "cc")
    command = [compiler, *_FLAGS, *FMA_FLAGS[platform.machine()], "-S", "-o", str(assembly), str(_CSRC / source)]
    subprocess.run(command, check=True, capture_output=True)
    # x86: vfmadd231ss, vfnmsub132ps...; ARM: fmadd, fmsub, fmla, fmls...
    assert re.findall(r"\bv?fn?m(?:add|sub|la|ls)\w*", assembly.read_text(errors="replace")) == []


def test_bad_indices_raise_instead_of_writing_out_of_bounds() -> None:
    x = torch.randn(2, 5)
    with pytest.raises(IndexError, match=r"outside \[0, 5\)"):
        keep_winners(x, torch.tensor([[0, 5], [1, 2]]))
    with pytest.raises(IndexError, match=r"outside \[0, 5\)"):
        keep_winners(x, torch.tensor([[0, -1], [1, 2]]))
    with pytest.raises(ValueError, match="int64"):
        take_rows(x, torch.tensor([[0, 1], [1, 2]], dtype=torch.int32))


def test_k_out_of_range_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="k"):
        topk_indices(torch.randn(2, 5), 6)


def rows_with_ties_and_odd_values(n: int) -> torch.Tensor:
    x = torch.randn(12, n)
    x[1] = torch.randint(-2, 3, (n,)).float()  # ties everywhere, the k-th included
    x[2, ::3] = 0.0  # many tied zeros
    x[3, n // 2] = float("nan")  # a NaN winner: everything is kept, as torch's amin gives NaN
    x[4, :] = float("nan")
    x[5, 1] = -float("inf")
    x[6, 2] = float("inf")
    x[7] = 1.0  # one value
    return x


@pytest.mark.parametrize("n", [5, 300, 1024], ids=lambda n: f"n={n}")  # below 8, a partial byte, whole bytes
@pytest.mark.parametrize("relu", [False, True], ids=["signed", "relu"])
@pytest.mark.parametrize("scoring", ["value", "magnitude", "boosted"])
def test_threshold_keep_matches_the_mask_composition(n: int, relu: bool, scoring: str) -> None:
    torch.manual_seed(n)
    x = rows_with_ties_and_odd_values(n).requires_grad_()
    k = max(1, n // 10)
    boost = torch.rand(n) + 0.5 if scoring == "boosted" else None
    by_magnitude = scoring == "magnitude"
    out, counts = threshold_keep(x, k, by_magnitude=by_magnitude, boost_factors=boost, relu=relu, counts=True)
    grad_out = torch.randn(12, n)
    (grad,) = torch.autograd.grad(out, x, grad_out)

    scores = x.detach().abs() if by_magnitude else x.detach()
    mask = threshold_mask(scores * boost if boost is not None else scores, k)
    expected = keep_masked(x, mask, relu=relu)
    (expected_grad,) = torch.autograd.grad(expected, x, grad_out)
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.nan_to_num(), expected.nan_to_num())
    assert torch.equal(grad, expected_grad)
    assert torch.equal(counts, mask.sum(0))
    assert mask[3].all() and (boost is not None or mask[1].sum() > k)  # the rows test what they should

    # float64 takes torch's operations: the same output and counts
    out64, counts64 = threshold_keep(
        x.double(),
        k,
        by_magnitude=by_magnitude,
        boost_factors=None if boost is None else boost.double(),
        relu=relu,
        counts=True,
    )
    assert torch.equal(out64.float().nan_to_num(), out.nan_to_num()) and torch.equal(counts64, counts)


def test_a_nan_winner_passes_its_gradient_through_relu_as_in_torch() -> None:
    x = torch.tensor([[float("nan"), 1.0, -2.0, 0.5]], requires_grad=True)
    k_sparse(x, 2, relu=True).backward(torch.ones(1, 4))
    x64 = x.detach().double().requires_grad_()  # torch's operations
    k_sparse(x64, 2, relu=True).backward(torch.ones(1, 4, dtype=torch.float64))
    assert x.grad.tolist() == x64.grad.tolist() == [[1.0, 1.0, 0.0, 0.0]]


@pytest.mark.parametrize("boosted", [False, True], ids=["plain", "boosted per channel"])
@pytest.mark.parametrize(
    ("channels", "k", "layout"),
    [(12, 3, torch.contiguous_format), (40, 20, torch.channels_last)],
    ids=["channel kernel", "row kernel after moving the channels last"],
)
def test_the_channels_of_feature_maps_take_a_kernel(
    boosted: bool, channels: int, k: int, layout: torch.memory_format
) -> None:
    # the channels of (B, C, H, W): float32 takes the channel kernel (at most CHANNELS_MAX_K winners), or the row
    # kernel on a copy with the channels last; float64 takes torch.topk along dim 1
    torch.manual_seed(3)
    x = torch.randn(4, channels, 5, 6, dtype=torch.float64).float().requires_grad_()
    boost = torch.rand(channels, 1, 1) + 0.5 if boosted else None
    seen = []

    def scale_of(indices: torch.Tensor, counts: torch.Tensor | None) -> torch.Tensor:
        seen.append(indices.shape)
        return 1.0 + indices.to(x.dtype) / 10

    out, indices, counts = select_and_keep(x, k, dim=1, boost_factors=boost, counts=True, grad_scale_of=scale_of)
    grad_out = torch.randn(4, channels, 5, 6)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    assert seen == [(4, k, 5, 6)] and indices.shape == (4, k, 5, 6)
    assert out.is_contiguous(memory_format=layout)  # the kernel's layout, as documented
    x64 = x.detach().double().requires_grad_()
    out64, indices64, counts64 = select_and_keep(
        x64, k, dim=1, boost_factors=None if boost is None else boost.double(), counts=True, grad_scale_of=scale_of
    )
    (grad64,) = torch.autograd.grad(out64, x64, grad_out.double())
    assert torch.equal(indices, indices64.sort(dim=1).values) and torch.equal(counts, counts64)
    assert torch.equal(out, out64.float())
    torch.testing.assert_close(grad, grad64.float())
    kept, kept_counts = threshold_keep(x, k, dim=1, boost_factors=boost, counts=True)
    kept64, kept_counts64 = threshold_keep(
        x64, k, dim=1, boost_factors=None if boost is None else boost.double(), counts=True
    )
    assert torch.equal(kept, kept64.float()) and torch.equal(kept_counts, kept_counts64)
