"""Top-k selection: which units win, and the sparse output that keeps only them.

Selection runs on a detached score tensor (the activations, their magnitudes, or boosted activations);
the output is built from the undetached input, so the gradient flows only through the winners.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ksparse_pl.functional._autograd import first_order_only
from ksparse_pl.functional._checks import check_float_input, check_k
from ksparse_pl.functional.boosting import winner_counts
from ksparse_pl.functional.native import native_serves
from ksparse_pl.functional.native_duty_cycle import WinState
from ksparse_pl.functional.native_topk import (
    CHANNELS_MAX_K,
    RowSelection,
    keep_at_least_channels,
    keep_at_least_rows,
    native_applies,
    scale_channel_winners_,
    select_channels,
    select_rows,
    take_bits_rows,
    take_bits_rows_at,
    take_rows,
)

#: ``grad_scale_of(indices, counts)`` of :func:`select_and_keep`: gradient factors (one per winner, or with
#: ``per_sample`` one per sample and index), or None.
GradScaleOf = Callable[[Tensor | None, Tensor | None], Tensor | None]


def selection_scores(x: Tensor, *, by_magnitude: bool = False, boost_factors: Tensor | None = None) -> Tensor:
    """The detached scores that decide the winners: ``x`` (or ``|x|``), times per-unit boost factors.

    ``boost_factors`` broadcasts against ``x`` (shape ``(n,)`` for ``(..., n)`` inputs).
    """
    scores = x.detach()
    if by_magnitude:
        scores = scores.abs()
    if boost_factors is not None:
        scores = scores * boost_factors
    return scores


def topk_indices(scores: Tensor, k: int, dim: int = -1) -> Tensor:
    """Indices of the ``k`` largest scores along ``dim``: exactly ``k`` per slice.

    NaN ranks above every number (as in ``torch.topk``), so a NaN input is always among the winners and
    shows in the output rather than being dropped. On CPU float32 along the last dim the compiled kernel
    of :mod:`ksparse_pl.functional.native_topk` answers, in ascending index order, with ties going to the
    lower index; elsewhere ``torch.topk`` does, in its own (deterministic) order.
    """
    check_k(k, scores.shape[dim])
    if native_applies(scores, dim):
        return _winners_of(select_rows(scores, k))
    return scores.topk(k, dim=dim, sorted=False).indices


def winner_indices(
    x: Tensor, k: int, *, dim: int = -1, by_magnitude: bool = False, boost_factors: Tensor | None = None
) -> Tensor:
    """The winners of ``x``: ``topk_indices(selection_scores(x, ...), k, dim)`` without a scores tensor on CPU.

    On CPU float32 along the last dim the kernel scores each row (``|x|``, boost) while it selects, so no
    ``(..., n)`` scores tensor is built; elsewhere this is exactly the composition above.

    Example:
        >>> import torch
        >>> winner_indices(torch.tensor([[0.5, -3.0, 2.0]]), 1, by_magnitude=True)
        tensor([[1]])
    """
    n = x.shape[dim]
    check_k(k, n)
    if native_applies(x, dim) and (boost_factors is None or boost_factors.shape == (n,)):
        return _winners_of(select_rows(x, k, boost=boost_factors, by_magnitude=by_magnitude))
    return topk_indices(selection_scores(x, by_magnitude=by_magnitude, boost_factors=boost_factors), k, dim=dim)


def _winners_of(selection: RowSelection) -> Tensor:
    """The indices of a selection that asked for them (``select_rows``' default)."""
    assert selection.indices is not None
    return selection.indices


def threshold_mask(scores: Tensor, k: int, dim: int = -1) -> Tensor:
    """Boolean mask of every score at least as large as the k-th largest along ``dim``.

    Keeps more than ``k`` units when the k-th score is tied. A NaN score is kept (``~(s < t)``), so NaNs
    are never dropped silently.
    """
    kth = scores.gather(dim, topk_indices(scores, k, dim=dim)).amin(dim=dim, keepdim=True)
    return ~(scores < kth)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by ``scale`` (sensitivity)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(scale)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale.to(grad.dtype), None


def scale_grad(x: Tensor, scale: Tensor) -> Tensor:
    """Return ``x`` unchanged, but multiply the gradient flowing back through it by ``scale``."""
    return _ScaleGrad.apply(x, scale)


def keep_winners(
    x: Tensor, indices: Tensor, *, dim: int = -1, relu: bool = False, grad_scale: Tensor | None = None
) -> Tensor:
    """Zero all of ``x`` but the entries at ``indices`` along ``dim``; the gradient flows only through those.

    Args:
        x: activations.
        indices: winner indices along ``dim`` (from :func:`topk_indices`).
        dim: the unit dimension.
        relu: also zero winners that are negative (ReLU after top-k).
        grad_scale: per-winner gradient factor, shaped like ``indices`` (sensitivity); forward unchanged.
    """
    if native_applies(x, dim) and (grad_scale is None or grad_scale.dtype == torch.float32):
        return _KeepWinnersRows.apply(x, indices, relu, grad_scale)
    values = x.gather(dim, indices)
    if relu:
        values = values.relu()
    if grad_scale is not None:
        values = scale_grad(values, grad_scale)
    return torch.zeros_like(x).scatter(dim, indices, values)


class _KeepWinnersRows(torch.autograd.Function):
    """:func:`keep_winners` along the last dim by the native kernel: no ``zeros`` + ``scatter`` round trip.

    The backward is :class:`_SelectRows`': it keeps one bit per entry (and with ``grad_scale``, the winners and
    their factors).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, indices: Tensor, relu: bool, grad_scale: Tensor | None) -> Tensor:
        out, bits = take_rows(x, indices, relu=relu)
        ctx.save_for_backward(bits, None if grad_scale is None else indices, grad_scale)
        return out

    @staticmethod
    @first_order_only
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        return _passed(grad, *ctx.saved_tensors), None, None, None


class _SelectRows(torch.autograd.Function):
    """:func:`select_and_keep` by the native kernel: selection, output and counts in one pass over ``x``.

    The backward keeps one bit per entry and masks the gradient in one pass in order (with ``grad_scale_of``'s
    factors, also the winners and one factor each, applied to each row while it is in cache): zeroing a gradient
    and gathering the winners' entries into it took 1.5-1.8 times as long in a profiled training step, as the
    gathers miss the caches there.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        k: int,
        boost: Tensor | None,
        by_magnitude: bool,
        relu: bool,
        counts: bool,
        grad_scale_of: GradScaleOf | None,
        indices: bool,
        per_sample: bool,
        win_state: WinState | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        # Per sample, the counts and the factors come from the winners: the kernel's counts sum over all rows.
        selection = select_rows(
            x,
            k,
            boost=boost,
            by_magnitude=by_magnitude,
            output=True,
            relu=relu,
            counts=counts and not per_sample,
            indices=indices or per_sample,
            win_state=win_state,
        )
        winners, wins = selection.indices, selection.counts
        if per_sample and counts:
            assert winners is not None  # asked for above
            wins = _sample_counts(winners, x.shape[-1])
        reported = winners if indices else None
        grad_scale = _grad_scale(grad_scale_of, reported, wins, _per_sample_shape(x, -1) if per_sample else None)
        if grad_scale is None:
            ctx.save_for_backward(selection.bits, None, None)
        else:
            assert winners is not None  # factors are given for given winners, or per sample (winners asked for)
            if per_sample:
                grad_scale = _factors_per_winner(grad_scale, winners)
            ctx.save_for_backward(selection.bits, winners, grad_scale)  # the bits leave out winners ReLU zeroed
        if reported is not None:
            ctx.mark_non_differentiable(reported)
        # Only the output is differentiable, so its gradient is always given; without this autograd would
        # also fill a (B, k) int64 tensor of zeros as the indices' "gradient" before every backward.
        ctx.set_materialize_grads(False)
        return selection.output, reported, wins  # type: ignore[return-value]

    @staticmethod
    @first_order_only
    def backward(ctx: Any, grad: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        return _passed(grad, *ctx.saved_tensors), *[None] * 9


def select_rows_adding_wins(
    x: Tensor,
    k: int,
    win_state: WinState,
    *,
    by_magnitude: bool = False,
    boost_factors: Tensor | None = None,
    relu: bool = False,
) -> Tensor:
    """``select_and_keep(x, k, ...)[0]`` of a float32 CPU ``x`` along its last dim, whose win counts the same kernel
    call adds to ``win_state``, each row one sample: a layer's training step without sensitivity, in one process,
    without the counts' tensor and a second kernel call.

    Raises:
        ValueError: the kernels do not serve ``x`` (see :func:`~ksparse_pl.functional.native_topk.native_applies`).
    """
    if not native_applies(x, -1):
        raise ValueError(
            f"select_rows_adding_wins: expected a float32 CPU `x` the kernels serve, but got {x.dtype} on {x.device}."
        )
    check_k(k, x.shape[-1])
    out, _, _ = _SelectRows.apply(x, k, boost_factors, by_magnitude, relu, False, None, False, False, win_state)
    return out


class _SelectChannels(torch.autograd.Function):
    """:func:`select_and_keep` over the channels (dim 1) of ``(B, C, ...)`` maps by the channel kernel, in their
    own layout; the backward keeps one bit per entry (and with ``grad_scale_of``'s factors, them and the winners)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        k: int,
        boost: Tensor | None,
        by_magnitude: bool,
        relu: bool,
        counts: bool,
        grad_scale_of: GradScaleOf | None,
        indices: bool,
        per_sample: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        selection = select_channels(
            x,
            k,
            boost=boost,
            by_magnitude=by_magnitude,
            relu=relu,
            counts=counts,
            per_sample=per_sample,
            indices=indices,
        )
        per_sample_shape = _per_sample_shape(x, 1) if per_sample else None
        grad_scale = _grad_scale(grad_scale_of, selection.indices, selection.counts, per_sample_shape)
        # Per sample the factors stay (B, C): the backward scales each channel's positions as it masks them.
        winners = None if grad_scale is None or per_sample else selection.indices
        ctx.save_for_backward(selection.bits, winners, grad_scale)
        if selection.indices is not None:
            ctx.mark_non_differentiable(selection.indices)
        ctx.set_materialize_grads(False)
        return selection.output, selection.indices, selection.counts

    @staticmethod
    @first_order_only
    def backward(ctx: Any, grad: Tensor, *_: Any) -> tuple[Tensor, None, None, None, None, None, None, None, None]:
        bits, indices, grad_scale = ctx.saved_tensors
        # per sample and channel, (B, C) factors scale each channel's positions as they are masked
        passed = _passed_by_bits(grad, bits, grad_scale if indices is None else None)
        if grad_scale is not None and indices is not None:  # k of C entries per position: scaled where they are
            scale_channel_winners_(passed, indices, grad_scale)
        return passed, None, None, None, None, None, None, None, None


def _passed(grad: Tensor, bits: Tensor, winners: Tensor | None, factors: Tensor | None) -> Tensor:
    """The rows kernel's backward: ``grad`` where its bit is set, 0 elsewhere, and with ``winners`` (along the last
    dim) the entries there also multiplied by their ``factors``."""
    if winners is None:
        return _passed_by_bits(grad, bits)
    assert factors is not None  # the winners are kept for their factors
    return take_bits_rows_at(grad, bits, winners, factors)


def _passed_by_bits(grad: Tensor, bits: Tensor, factors: Tensor | None = None) -> Tensor:
    """``grad`` where its bit is set, 0 elsewhere: ``bits`` holds one row of bits per row of ``grad`` seen as
    ``(bits.shape[0], -1)`` (a row of a kernel's rows, or a sample of the channel kernel's maps); ``factors``, as
    :func:`take_bits_rows` takes them, scale the kept entries by groups."""
    if grad.dim() == 2:  # the usual (B, n): reshaping it and viewing the result back cost 6-16 us per backward
        return take_bits_rows(grad, bits, factors)
    return take_bits_rows(grad.reshape(bits.shape[0], -1), bits, factors).view(grad.shape)


def _channels_native(x: Tensor, dim: int, k: int) -> bool:
    """Whether the channel kernel serves ``x`` along ``dim``: the channels (dim 1) of a contiguous float32 CPU
    ``(B, C, ...)`` tensor, at most ``CHANNELS_MAX_K`` winners per position."""
    return x.dim() > 2 and dim % x.dim() == 1 and k <= CHANNELS_MAX_K and x.is_contiguous() and native_serves(x)


def _grad_scale(
    grad_scale_of: GradScaleOf | None,
    indices: Tensor | None,
    counts: Tensor | None,
    per_sample_shape: tuple[int, int] | None = None,
) -> Tensor | None:
    """What ``grad_scale_of`` gives for these winners, checked to hold one factor per winner (or with
    ``per_sample_shape``, one per sample and index)."""
    if grad_scale_of is None:
        return None
    scale = grad_scale_of(indices, counts)
    if scale is None:
        return None
    expected: tuple[int, ...]
    if per_sample_shape is not None:
        expected, what = per_sample_shape, "one factor per sample and index (per_sample=True)"
    elif indices is None:
        raise ValueError(
            "select_and_keep: `grad_scale_of` returned gradient factors, but with `indices=False` there are no "
            "winners to give them to; pass `indices=True` (or `per_sample=True` for factors per sample and index)."
        )
    else:
        expected, what = tuple(indices.shape), "one factor per winner, shaped like the indices"
    if not isinstance(scale, Tensor) or tuple(scale.shape) != expected:
        got = f"shape {tuple(scale.shape)}" if isinstance(scale, Tensor) else type(scale).__name__
        raise ValueError(f"select_and_keep: `grad_scale_of` must return None or {what} {expected}, but returned {got}.")
    return scale


def _per_sample_shape(x: Tensor, dim: int) -> tuple[int, int]:
    """``(S, n)``: the samples (dim 0) by the indices along ``dim``, the shape of per-sample counts and factors."""
    return x.shape[0], x.shape[dim]


def _sample_counts(winners: Tensor, n: int) -> Tensor:
    """``(S, n)`` int64: in how many of sample ``s``'s slices index ``c`` won, from winners ``(S, ..., k)`` along
    the last dim."""
    flat = winners.reshape(winners.shape[0], -1)
    counts = torch.zeros(flat.shape[0], n, dtype=torch.int64, device=flat.device)
    return counts.scatter_add_(1, flat, torch.ones_like(flat))


def _factors_per_winner(factors: Tensor, winners: Tensor) -> Tensor:
    """Per-sample-and-index ``factors`` ``(S, n)`` as one factor per winner of ``winners`` ``(S, ..., k)`` (along the
    last dim)."""
    return factors.gather(1, winners.reshape(winners.shape[0], -1)).view_as(winners)


def _native_elsewhere(x: Tensor, dim: int) -> bool:
    """Whether the kernels serve ``x`` along ``dim`` once that dim is moved last (a float32 CPU tensor, another
    dim than the last)."""
    return x.dim() > 1 and dim % x.dim() != x.dim() - 1 and native_serves(x)


def _per_index(factors: Tensor | None, x: Tensor, dim: int) -> Tensor | None:
    """``factors`` as an ``(n,)`` vector, one per index along ``dim``, if they broadcast against ``x`` that way
    (``(C, 1, 1)`` for the channels of ``(B, C, H, W)``); else None."""
    n = x.shape[dim]
    position = dim % x.dim() - x.dim()  # counted from the right, as broadcasting aligns shapes
    if factors is None or factors.numel() != n or factors.dim() < -position or factors.shape[position] != n:
        return None
    return factors.reshape(n)


def select_and_keep(
    x: Tensor,
    k: int,
    *,
    dim: int = -1,
    by_magnitude: bool = False,
    boost_factors: Tensor | None = None,
    relu: bool = False,
    counts: bool = False,
    grad_scale_of: GradScaleOf | None = None,
    indices: bool = True,
    per_sample: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Top-k selection and its sparse output in one step: what a k-sparse layer does.

    Equals ``keep_winners(x, indices, dim=dim, relu=relu, grad_scale=grad_scale_of(indices, counts))`` with
    ``indices = topk_indices(selection_scores(x, ...), k, dim)``; on CPU float32 one kernel pass per row does
    the selection, the output and the counts (no scores tensor, no second read of ``x``). The channels (dim 1)
    of a contiguous ``(B, C, ...)`` map with ``k <= 16`` take a kernel that works in the map's layout (8
    positions at a time). Along another dim than the last otherwise, that dim is first moved last, which costs
    one copy, and the output and indices come back as views of that layout (the output is then channels-last).

    Args:
        x: activations.
        k: winners per slice, in ``[1, x.shape[dim]]``.
        dim: the unit dimension.
        by_magnitude: rank by ``|x|``.
        boost_factors: per-unit factors of the scores, broadcasting against ``x``.
        relu: zero negative winners.
        counts: also return how many slices each index along ``dim`` won in.
        grad_scale_of: called once, without autograd, with the winners (``indices`` and the counts, each None
            unless asked for) before the output is returned; it returns None or per-winner gradient factors shaped
            like ``indices`` (a layer updates its state there, and with sensitivity returns its winners' factors).
        indices: also return the winners; ``False`` gives None in their place, and the kernels then do not write
            them (the channel kernel does not track them either: a third of its time or more).
        per_sample: count and scale per sample (dim 0, so ``dim`` must be another): ``counts`` is then ``(S, n)``
            (``S = x.shape[0]``, ``n = x.shape[dim]``), how many of sample ``s``'s slices index ``c`` won in (at
            how many positions, for maps), and ``grad_scale_of`` returns ``(S, n)`` factors: the gradient at every
            winner of index ``c`` in sample ``s`` is multiplied by ``[s, c]`` (a layer's per-sample, per-channel
            state; the channel kernel then builds nothing per winner).

    Returns:
        ``(output, indices, counts)``: the sparse output, the winners along ``dim`` (None unless ``indices``), and
        the ``(x.shape[dim],)`` int64 win counts (``(S, n)`` with ``per_sample``; None unless ``counts``).

    Raises:
        ValueError: ``per_sample`` with ``dim`` 0 or a 1-D ``x``; ``grad_scale_of`` returning factors of another
            shape than the winners' (or ``(S, n)``), or factors with ``indices=False`` and not ``per_sample``.
    """
    check_float_input(x)
    n = x.shape[dim]
    check_k(k, n)
    if per_sample and (x.dim() < 2 or dim % x.dim() == 0):
        raise ValueError(
            f"select_and_keep: `per_sample=True` counts per sample along dim 0, so it needs `x` with 2 or more dims "
            f"and `dim` other than 0, but got `x` of shape {tuple(x.shape)} and dim={dim}."
        )
    if native_applies(x, dim) and (boost_factors is None or boost_factors.shape == (n,)):
        return _SelectRows.apply(x, k, boost_factors, by_magnitude, relu, counts, grad_scale_of, indices, per_sample)
    boost = _per_index(boost_factors, x, dim)
    if _channels_native(x, dim, k) and (boost_factors is None or boost is not None):
        return _SelectChannels.apply(x, k, boost, by_magnitude, relu, counts, grad_scale_of, indices, per_sample)
    if _native_elsewhere(x, dim) and (boost_factors is None or boost is not None):
        # The kernel reads rows: the units' dim moved last (one copy), the results moved back as views.
        def moved_scale_of(winners: Tensor | None, wins: Tensor | None) -> Tensor | None:
            assert grad_scale_of is not None
            if per_sample:  # (S, n) whatever the layout, as dim 0 stays first
                return _grad_scale(grad_scale_of, _moved_back(winners, dim), wins, _per_sample_shape(x, dim))
            scale = _grad_scale(grad_scale_of, _moved_back(winners, dim), wins)
            return None if scale is None else scale.movedim(dim, -1)

        out, winners, wins = select_and_keep(
            x.movedim(dim, -1),
            k,
            by_magnitude=by_magnitude,
            boost_factors=boost,
            relu=relu,
            counts=counts,
            grad_scale_of=None if grad_scale_of is None else moved_scale_of,
            indices=indices,
            per_sample=per_sample,
        )
        return out.movedim(-1, dim), _moved_back(winners, dim), wins
    winners = winner_indices(x, k, dim=dim, by_magnitude=by_magnitude, boost_factors=boost_factors)
    if per_sample:
        wins = _sample_counts(winners.movedim(dim, -1), n) if counts else None
    else:
        wins = winner_counts(winners, n) if counts else None
    reported = winners if indices else None  # as the kernel paths report them
    with torch.no_grad():  # as inside the kernel path's autograd Function
        grad_scale = _grad_scale(grad_scale_of, reported, wins, _per_sample_shape(x, dim) if per_sample else None)
        if per_sample and grad_scale is not None:
            grad_scale = _factors_per_winner(grad_scale, winners.movedim(dim, -1)).movedim(-1, dim)
    out = keep_winners(x, winners, dim=dim, relu=relu, grad_scale=grad_scale)
    return out, reported, wins


def _moved_back(winners: Tensor | None, dim: int) -> Tensor | None:
    """Winners found along the last dim of ``x.movedim(dim, -1)``, as winners along ``dim`` of ``x``."""
    return None if winners is None else winners.movedim(-1, dim)


def keep_masked(x: Tensor, mask: Tensor, *, relu: bool = False, grad_scale: Tensor | None = None) -> Tensor:
    """:func:`keep_winners` for a boolean mask (threshold mode); ``grad_scale`` broadcasts against ``x``."""
    if grad_scale is not None:
        x = scale_grad(x, grad_scale)
    # where, not x * mask: an infinite activation the mask leaves out gives 0, not NaN (its gradient too).
    out = torch.where(mask, x, 0.0)
    return out.relu() if relu else out


def threshold_keep(
    x: Tensor,
    k: int,
    *,
    dim: int = -1,
    by_magnitude: bool = False,
    boost_factors: Tensor | None = None,
    relu: bool = False,
    counts: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Threshold mode: keep every entry whose score is at least the k-th largest along ``dim`` (ties kept, so
    possibly more than ``k``), zero the rest. NaN scores are kept, and a NaN among the ``k`` largest keeps the
    whole slice, as with :func:`threshold_mask`.

    Equals ``keep_masked(x, threshold_mask(selection_scores(x, ...), k, dim), relu=relu)``; on CPU float32 one
    kernel pass per row selects and writes the output (along other dims as :func:`select_and_keep`: the
    channels of contiguous maps in their layout, else after moving the dim last), and the backward keeps one
    bit per entry instead of a bool mask.

    Returns:
        ``(output, counts)``: ``counts`` (None unless asked), how many slices kept each index along ``dim``.

    Example:
        >>> import torch
        >>> threshold_keep(torch.tensor([[3.0, 2.0, 2.0, 1.0]]), 2)[0]
        tensor([[3., 2., 2., 0.]])
    """
    check_float_input(x)
    n = x.shape[dim]
    check_k(k, n)
    if native_applies(x, dim) and (boost_factors is None or boost_factors.shape == (n,)):
        out, kept = _KeepAtLeast.apply(x, k, boost_factors, by_magnitude, relu, counts, keep_at_least_rows)
        return out, kept
    boost = _per_index(boost_factors, x, dim)
    if _channels_native(x, dim, k) and (boost_factors is None or boost is not None):
        out, kept = _KeepAtLeast.apply(x, k, boost, by_magnitude, relu, counts, keep_at_least_channels)
        return out, kept
    if _native_elsewhere(x, dim) and (boost_factors is None or boost is not None):
        out, kept = threshold_keep(
            x.movedim(dim, -1), k, by_magnitude=by_magnitude, boost_factors=boost, relu=relu, counts=counts
        )
        return out.movedim(-1, dim), kept
    mask = threshold_mask(selection_scores(x, by_magnitude=by_magnitude, boost_factors=boost_factors), k, dim=dim)
    kept = mask.movedim(dim, -1).reshape(-1, n).sum(0) if counts else None
    return keep_masked(x, mask, relu=relu), kept


class _KeepAtLeast(torch.autograd.Function):
    """:func:`threshold_keep` by a native kernel (``keep_at_least_rows`` or ``keep_at_least_channels``); the
    backward keeps one bit per entry."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        k: int,
        boost: Tensor | None,
        by_magnitude: bool,
        relu: bool,
        counts: bool,
        kernel: Callable[..., tuple[Tensor, Tensor, Tensor | None]],
    ) -> tuple[Tensor, Tensor | None]:
        out, bits, kept = kernel(x, k, boost=boost, by_magnitude=by_magnitude, relu=relu, counts=counts)
        ctx.save_for_backward(bits)
        ctx.set_materialize_grads(False)
        return out, kept

    @staticmethod
    @first_order_only
    def backward(ctx: Any, grad: Tensor, *_: Any) -> tuple[Tensor, None, None, None, None, None, None]:
        (bits,) = ctx.saved_tensors
        return _passed_by_bits(grad, bits), None, None, None, None, None, None


def k_sparse(x: Tensor, k: int, *, dim: int = -1, by_magnitude: bool = False, relu: bool = False) -> Tensor:
    """Keep the ``k`` largest entries of ``x`` along ``dim`` (exactly ``k``), zero the rest.

    The functional twin of :class:`ksparse_pl.KSparse` without state (no boosting, no sensitivity).

    Args:
        x: floating-point activations.
        k: how many units to keep, in ``[1, x.shape[dim]]``.
        dim: the unit dimension.
        by_magnitude: rank by ``|x|`` and keep the signs (Cottonwood).
        relu: zero negative winners (OpenAI's TopK SAE).

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: ``k`` is not in ``[1, x.shape[dim]]``.

    Example:
        >>> import torch
        >>> from ksparse_pl.functional import k_sparse
        >>> k_sparse(torch.tensor([[0.5, -3.0, 2.0, 1.0]]), 2)
        tensor([[0., 0., 2., 1.]])
        >>> k_sparse(torch.tensor([[0.5, -3.0, 2.0, 1.0]]), 2, by_magnitude=True)
        tensor([[ 0., -3.,  2.,  0.]])
    """
    return select_and_keep(x, k, dim=dim, by_magnitude=by_magnitude, relu=relu, indices=False)[0]
