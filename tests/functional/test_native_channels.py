"""The channel top-k kernel (feature maps in their own layout) against the row kernel on the channels-last copy."""

from __future__ import annotations

import pytest
import torch

from ksparse_pl.functional.native import native_enabled
from ksparse_pl.functional.native_topk import (
    CHANNELS_MAX_K,
    keep_at_least_channels,
    keep_at_least_rows,
    scale_channel_winners_,
    select_channels,
    select_rows,
    take_bits_rows,
)
from ksparse_pl.functional.selection import select_and_keep

pytestmark = pytest.mark.skipif(not native_enabled(), reason="no C compiler to build the kernels")


def _either_sign(x: torch.Tensor) -> torch.Tensor:
    """``x`` with half its entries negated, NaN included (``neg`` flips a NaN's sign bit, multiplying does not)."""
    return torch.where(torch.rand(x.shape) < 0.5, x.neg(), x)


MAPS = {
    "normal": lambda shape: torch.randn(shape),
    "small integers (ties)": lambda shape: torch.randint(-2, 3, shape).float(),
    "relu'd, with -0": lambda shape: torch.randn(shape).relu() * torch.where(torch.rand(shape) < 0.5, -1.0, 1.0),
    "NaN and infinities, either sign": lambda shape: _either_sign(
        torch.randn(shape).masked_fill(torch.rand(shape) < 0.05, float("nan"))
        * torch.where(torch.rand(shape) < 0.05, float("inf"), 1.0)
    ),
}


# Positions not a multiple of 8, and multiples: each group's gradient bits are then whole bytes of the bit rows, and
# a single sample large enough for two threads (64 x 64 positions) is split between them.
@pytest.mark.parametrize("vectorized", [True, False], ids=["vectorized", "portable"])
@pytest.mark.parametrize("maps", list(MAPS))
@pytest.mark.parametrize(
    ("shape", "k"),
    [
        ((3, 12, 5, 6), 3),
        ((2, 32, 4, 4), 4),
        ((2, 5, 3), 5),
        ((1, 20, 13), CHANNELS_MAX_K),
        ((2, 3, 1, 1), 1),
        ((1, 16, 64, 64), 4),
        ((1, 16, 63, 65), 4),
    ],
)
def test_same_winners_output_counts_and_gradient_bits_as_the_row_kernel(
    shape: tuple[int, ...], k: int, maps: str, vectorized: bool
) -> None:
    torch.manual_seed(sum(shape) + k)
    x = MAPS[maps](shape)
    channels = shape[1]
    for boost, by_magnitude, relu in [
        (None, False, False),
        (torch.rand(channels) + 0.5, True, True),
        (None, False, True),
    ]:
        got = select_channels(
            x, k, boost=boost, by_magnitude=by_magnitude, relu=relu, counts=True, vectorized=vectorized
        )
        rows = x.movedim(1, -1).contiguous()
        want = select_rows(rows, k, boost=boost, by_magnitude=by_magnitude, output=True, relu=relu, counts=True)
        assert torch.equal(got.indices, want.indices.movedim(-1, 1))
        torch.testing.assert_close(got.output, want.output.movedim(-1, 1), rtol=0, atol=0, equal_nan=True)
        assert torch.equal(got.counts, want.counts)
        # the bits pass the gradient at the winners, but not at a winner ReLU zeroed (x <= 0; NaN passes)
        winner = torch.zeros(shape, dtype=torch.bool).scatter(1, got.indices, True)
        passes = winner & ~(x <= 0) if relu else winner
        ones = torch.ones(shape[0], x[0].numel())
        assert torch.equal(take_bits_rows(ones, got.bits).view(shape), passes.float())
        # without the winners (the kernel then does not keep track of them): the same output, bits and counts
        without = select_channels(
            x, k, boost=boost, by_magnitude=by_magnitude, relu=relu, counts=True, indices=False, vectorized=vectorized
        )
        assert without.indices is None
        torch.testing.assert_close(without.output, got.output, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(without.bits, got.bits) and torch.equal(without.counts, got.counts)


@pytest.mark.parametrize("vectorized", [True, False], ids=["vectorized", "portable"])
@pytest.mark.parametrize("maps", list(MAPS))
@pytest.mark.parametrize(
    ("shape", "k"),
    [((3, 12, 5, 6), 3), ((2, 9, 4, 6), 3), ((2, 5, 3), 5), ((1, 20, 13), CHANNELS_MAX_K), ((1, 16, 64, 64), 4)],
)  # as above: whole bytes or not, and a sample split between threads
def test_threshold_mode_keeps_what_the_row_kernel_keeps(
    shape: tuple[int, ...], k: int, maps: str, vectorized: bool
) -> None:
    # ties at the k-th score kept, and the whole position where a NaN is among the k largest
    torch.manual_seed(sum(shape) + k)
    x = MAPS[maps](shape)
    for boost, by_magnitude, relu in [(None, False, False), (torch.rand(shape[1]) + 0.5, True, True)]:
        out, bits, counts = keep_at_least_channels(
            x, k, boost=boost, by_magnitude=by_magnitude, relu=relu, counts=True, vectorized=vectorized
        )
        rows = x.movedim(1, -1).contiguous()
        out_rows, bits_rows, counts_rows = keep_at_least_rows(
            rows, k, boost=boost, by_magnitude=by_magnitude, relu=relu, counts=True
        )
        torch.testing.assert_close(out, out_rows.movedim(-1, 1), rtol=0, atol=0, equal_nan=True)
        assert torch.equal(counts, counts_rows)
        ones = torch.ones(rows.shape)
        passes_rows = take_bits_rows(ones, bits_rows).movedim(-1, 1)
        assert torch.equal(take_bits_rows(torch.ones(shape[0], x[0].numel()), bits).view(shape), passes_rows)


def test_select_and_keep_over_channels_equals_the_channels_last_path() -> None:
    # A contiguous map takes the channel kernel, the same map channels-last the row kernel after a move: same
    # winners, output, counts, gradient factors from grad_scale_of, and gradients.
    torch.manual_seed(0)
    base = torch.randint(-3, 4, (4, 10, 3, 5)).float()  # ties
    boost = torch.rand(10, 1, 1) + 0.5
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        x = base.to(memory_format=layout).requires_grad_()
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []

        def scale_of(
            indices: torch.Tensor, counts: torch.Tensor | None, seen: list[tuple[torch.Tensor, torch.Tensor]] = seen
        ) -> torch.Tensor:
            assert counts is not None
            seen.append((indices.clone(), counts.clone()))
            return 1.0 + indices.float() / 10

        out, indices, counts = select_and_keep(
            x, 3, dim=1, boost_factors=boost, relu=True, counts=True, grad_scale_of=scale_of
        )
        (grad,) = torch.autograd.grad(out, x, torch.linspace(-1, 1, base.numel()).view(base.shape))
        results.append((out, indices, counts, grad, seen))
    (out, indices, counts, grad, seen), (out_cl, indices_cl, counts_cl, grad_cl, seen_cl) = results
    assert out.is_contiguous() and out_cl.is_contiguous(memory_format=torch.channels_last)  # as documented
    assert torch.equal(out, out_cl) and torch.equal(indices, indices_cl) and torch.equal(counts, counts_cl)
    assert torch.equal(grad, grad_cl) and (grad != 0).any()
    assert len(seen) == len(seen_cl) == 1 and all(torch.equal(a, b) for a, b in zip(seen[0], seen_cl[0], strict=True))


def test_more_winners_than_the_kernel_keeps_take_the_row_kernel() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 40, 3, 3)
    k = CHANNELS_MAX_K + 1
    with pytest.raises(ValueError, match=rf"`k` must be in \[1, {CHANNELS_MAX_K}\]"):
        select_channels(x, k)
    out, indices, _ = select_and_keep(x, k, dim=1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(indices, select_rows(x.movedim(1, -1).contiguous(), k).indices.movedim(-1, 1))


def test_scale_channel_winners_multiplies_the_winners_entries_in_place() -> None:
    grad = torch.ones(1, 3, 2)
    indices, factors = torch.tensor([[[2, 0]]]), torch.tensor([[[5.0, 7.0]]])  # k = 1 at each of 2 positions
    assert scale_channel_winners_(grad, indices, factors) is grad
    assert grad.tolist() == [[[1.0, 7.0], [1.0, 1.0], [5.0, 1.0]]]
    with pytest.raises(IndexError, match=r"outside \[0, 3\)"):
        scale_channel_winners_(grad, torch.tensor([[[3, 0]]]), factors)
    assert grad.tolist() == [[[1.0, 7.0], [1.0, 1.0], [5.0, 1.0]]]  # unchanged by the refused call
    with pytest.raises(ValueError, match="shaped"):
        scale_channel_winners_(grad, indices, factors[..., :1])


# one sample large enough for two threads: per-sample counts keep it on one
@pytest.mark.parametrize("vectorized", [True, False], ids=["vectorized", "portable"])
@pytest.mark.parametrize(("shape", "k"), [((3, 12, 5, 6), 3), ((2, 5, 3), 5), ((1, 16, 64, 64), 4)])
def test_per_sample_counts_are_each_samples_wins(shape: tuple[int, ...], k: int, vectorized: bool) -> None:
    torch.manual_seed(sum(shape))
    x = torch.randn(shape)
    got = select_channels(x, k, counts=True, per_sample=True, vectorized=vectorized)
    summed = select_channels(x, k, counts=True, vectorized=vectorized)
    assert summed.indices is not None and summed.counts is not None and got.counts is not None
    won = torch.zeros(shape, dtype=torch.int64).scatter(1, summed.indices, 1)
    assert torch.equal(got.counts, won.flatten(2).sum(2))
    assert torch.equal(got.counts.sum(0), summed.counts)
    assert torch.equal(got.output, summed.output) and torch.equal(got.bits, summed.bits)


def _packed(keep: torch.Tensor) -> torch.Tensor:
    """Bit i % 8 of byte i // 8 of each row set where ``keep`` (rows, n) is."""
    rows, n = keep.shape
    padded = torch.zeros(rows, (n + 7) // 8 * 8, dtype=torch.int64)
    padded[:, :n] = keep.long()
    return (padded.view(rows, -1, 8) << torch.arange(8)).sum(-1).to(torch.uint8)


# groups of whole bytes, of fewer than 8 entries, and of more that start inside a byte
@pytest.mark.parametrize(("rows", "groups", "group"), [(3, 4, 8), (2, 3, 7), (4, 5, 13), (2, 6, 1)])
def test_take_bits_scales_each_group_of_kept_entries_by_its_factor(rows: int, groups: int, group: int) -> None:
    torch.manual_seed(rows * groups * group)
    src = torch.randn(rows, groups * group)
    keep = torch.rand(src.shape) < 0.5
    keep[:, 0] = False  # under an infinite factor below: a cleared entry gives 0, not 0 * inf
    factors = 0.5 + torch.rand(rows, groups)
    factors[:, 0] = float("inf")
    expected = torch.where(keep, src * factors.repeat_interleave(group, dim=1), 0.0)
    assert torch.equal(take_bits_rows(src, _packed(keep), factors), expected)
    with pytest.raises(ValueError, match=r"`factors` of shape \(\d+, G\) with G dividing"):
        take_bits_rows(src, _packed(keep), torch.ones(rows, groups * group + 1))
