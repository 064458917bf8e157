"""The CPU top-k kernel (``csrc/topk_rows.c``, loaded by :mod:`ksparse_pl.functional.native`).

``torch.topk`` on CPU runs a selection over (value, index) pairs per row, which costs over ten times a ReLU
at the few percent of winners a sparse layer keeps. The kernel instead searches, per row, the threshold
with exactly ``k`` scores at or above it (vectorized counting passes, Newton steps on the count), and
writes the winners of sparse outputs and gradients in one call each. It serves float32 CPU tensors along
the last dimension; everything else (GPUs, other dtypes, ``torch.compile`` tracing) uses ``torch.topk``,
which picks the same winners except among tied scores.
"""

from __future__ import annotations

import functools
import math
import statistics
from typing import NamedTuple

import torch
from torch import Tensor

from ksparse_pl.functional.native import library, native_serves
from ksparse_pl.functional.native_duty_cycle import WinState, check_win_state, mark_updated


def native_applies(x: Tensor, dim: int) -> bool:
    """Whether :func:`select_rows` / :func:`take_rows` serve ``x`` along ``dim`` (float32, CPU, last dim)."""
    return x.dim() > 0 and dim in (-1, x.dim() - 1) and native_serves(x)


class RowSelection(NamedTuple):
    """What :func:`select_rows` returns: the winners, and what was asked for besides."""

    indices: Tensor | None  #: ``(..., k)`` int64, ascending along the last dim (None unless asked)
    output: Tensor | None  #: like ``x``: ``x`` at the winners (ReLU'd with ``relu``), 0 elsewhere
    counts: Tensor | None  #: ``(n,)`` int64: in how many rows each column won
    #: with ``output``: ``(rows, ceil(n / 8))`` uint8, where the output's gradient passes (at the winners, and
    #: with ``relu`` not where ``x <= 0``), for :func:`take_bits_rows`
    bits: Tensor | None


def select_rows(
    x: Tensor,
    k: int,
    *,
    boost: Tensor | None = None,
    by_magnitude: bool = False,
    output: bool = False,
    relu: bool = False,
    counts: bool = False,
    indices: bool = True,
    win_state: WinState | None = None,
) -> RowSelection:
    """The ``k`` largest scores of every row (last dim) of ``x``, with the sparse output and winner counts.

    The scores are ``x`` (``|x|`` with ``by_magnitude``), times ``boost`` (``(n,)``) if given: computed per
    row inside the kernel, so no scores tensor is built, and the output (with one bit per entry of where its
    gradient passes) is written while the row is in cache. NaN ranks above every number, ``-0.0`` ties with
    ``0.0``, and among tied scores the lower index wins. ``x`` must be a float32 CPU tensor and ``k`` in
    ``[1, n]`` (checked by the callers). ``indices=False`` leaves the winners' indices out (None).

    ``win_state``: a layer's win statistics, to which the same call adds the rows' win counts, each row one
    sample (:func:`~ksparse_pl.functional.native_duty_cycle.add_wins_` with ``batch`` the rows and ``positions``
    1): a layer's step without a second kernel call, nor the counts' tensor unless ``counts``.
    """
    lib = library()
    n = x.shape[-1]
    factors = _boost_factors(boost, n, "select_rows")
    rows = _as_rows(x)
    winners = torch.empty(rows.shape[0], k, dtype=torch.int64) if indices else None
    out = torch.empty_like(rows) if output else None
    bits = torch.empty(rows.shape[0], (n + 7) // 8, dtype=torch.uint8) if output else None
    wins = torch.zeros(n, dtype=torch.int64) if counts else None
    select = lib.ksparse_select_rows
    state_args: list[int] = []
    if win_state is not None:
        check_win_state("select_rows", win_state, n)
        duty_cycle, selection_count, samples_seen, period = win_state
        select = lib.ksparse_select_rows_adding_wins
        state_args = [duty_cycle.data_ptr(), selection_count.data_ptr(), samples_seen.data_ptr(), period]
    if (rows.shape[0] or state_args) and select(
        rows.data_ptr(),
        None if factors is None else factors.data_ptr(),
        int(by_magnitude),
        None if winners is None else winners.data_ptr(),
        None if out is None else out.data_ptr(),
        None if bits is None else bits.data_ptr(),
        int(relu),
        None if wins is None else wins.data_ptr(),
        rows.shape[0],
        n,
        k,
        *_normal_quantiles(k, n),
        torch.get_num_threads(),
        *state_args,
    ):
        raise MemoryError("ksparse_pl's top-k kernel could not allocate its row buffers")
    if win_state is not None:
        mark_updated(win_state)
    if x.dim() != 2:
        winners = None if winners is None else winners.view(*x.shape[:-1], k)
        out = None if out is None else out.view(x.shape)
    return RowSelection(winners, out, wins, bits)


def keep_at_least_rows(
    x: Tensor,
    k: int,
    *,
    boost: Tensor | None = None,
    by_magnitude: bool = False,
    relu: bool = False,
    counts: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Threshold mode of every row (last dim) of ``x``: ``x`` (ReLU'd with ``relu``) where the score is at least
    the row's k-th largest score (ties and NaN kept), 0 elsewhere; scores as in :func:`select_rows`.

    Returns ``(output, bits, counts)``: ``bits`` (``(rows, ceil(n / 8))`` uint8, bit ``i % 8`` of byte
    ``i // 8``) marks where the gradient passes (kept, and with ``relu`` not ``x <= 0``, as torch's ReLU lets a
    NaN's gradient through), for :func:`take_bits_rows`;
    ``counts`` (``(n,)`` int64, None unless asked): in how many rows each column was kept.
    """
    n = x.shape[-1]
    factors = _boost_factors(boost, n, "keep_at_least_rows")
    rows = _as_rows(x)
    out = torch.empty_like(rows)
    bits = torch.empty(rows.shape[0], (n + 7) // 8, dtype=torch.uint8)
    kept = torch.zeros(n, dtype=torch.int64) if counts else None
    if rows.shape[0] and library().ksparse_keep_at_least_rows(
        rows.data_ptr(),
        None if factors is None else factors.data_ptr(),
        int(by_magnitude),
        out.data_ptr(),
        bits.data_ptr(),
        int(relu),
        None if kept is None else kept.data_ptr(),
        rows.shape[0],
        n,
        k,
        *_normal_quantiles(k, n),
        torch.get_num_threads(),
    ):
        raise MemoryError("ksparse_pl's top-k kernel could not allocate its row buffers")
    return (out if x.dim() == 2 else out.view(x.shape)), bits, kept


#: The most winners per position that :func:`select_channels` serves (``MAX_K`` in ``csrc/topk_channels.c``).
CHANNELS_MAX_K = 16


class ChannelSelection(NamedTuple):
    """What :func:`select_channels` returns."""

    output: Tensor  #: like ``x``: ``x`` at the winners (ReLU'd with ``relu``), 0 elsewhere
    #: ``(B, k, ...)`` int64: the winning channels at each position, ascending along dim 1 (None unless asked)
    indices: Tensor | None
    bits: Tensor  #: ``(B, ceil(C * P / 8))`` uint8: where the gradient passes, for :func:`take_bits_rows`
    #: ``(C,)`` int64: at how many positions each channel won; with ``per_sample`` ``(B, C)``, in each sample
    counts: Tensor | None


def select_channels(
    x: Tensor,
    k: int,
    *,
    boost: Tensor | None = None,
    by_magnitude: bool = False,
    relu: bool = False,
    counts: bool = False,
    per_sample: bool = False,
    indices: bool = True,
    vectorized: bool = True,
) -> ChannelSelection:
    """The ``k`` largest scores over the channels (dim 1) of ``(B, C, ...)`` maps at every position, in their own
    layout (``csrc/topk_channels.c``): no copy with the channels last, as :func:`select_rows` would need.

    Scores, ties and NaN as in :func:`select_rows` (``boost``: ``(C,)``). ``bits`` marks, bit ``c * P + p`` of a
    sample's row (``P`` positions per channel), where the gradient passes, as in :func:`keep_at_least_rows`.
    ``x`` must be a contiguous float32 CPU tensor and ``k`` in ``[1, min(C, CHANNELS_MAX_K)]``. ``indices=False``
    leaves the winners out (None), which saves the kernel a third of its time or more (it need not keep track
    of them). ``per_sample`` counts each sample's wins apart: ``(B, C)`` counts instead of ``(C,)``.
    ``vectorized=False`` runs the portable code that CPUs without AVX2 get (for tests).
    """
    winners = torch.empty(x.shape[0], k, *x.shape[2:], dtype=torch.int64) if indices else None
    out, bits, wins = _run_channels(
        "select_channels", x, k, winners, boost, by_magnitude, relu, counts, vectorized, per_sample=per_sample
    )
    return ChannelSelection(out, winners, bits, wins)


def keep_at_least_channels(
    x: Tensor,
    k: int,
    *,
    boost: Tensor | None = None,
    by_magnitude: bool = False,
    relu: bool = False,
    counts: bool = False,
    vectorized: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Threshold mode of :func:`select_channels`: every score at least the position's k-th largest is kept (ties
    and NaN kept, the whole position where a NaN is among the k largest), as :func:`keep_at_least_rows` along
    rows. Returns ``(output, bits, counts)``."""
    return _run_channels("keep_at_least_channels", x, k, None, boost, by_magnitude, relu, counts, vectorized)


def scale_channel_winners_(grad: Tensor, indices: Tensor, factors: Tensor) -> Tensor:
    """Multiply ``grad`` (a contiguous float32 ``(B, C, ...)`` map) in place by ``factors`` at the winners
    ``indices`` of :func:`select_channels` (both ``(B, k, ...)``): the winners' gradient factors; returns ``grad``."""
    batch, channels = grad.shape[:2]
    k = indices.shape[1]
    if indices.shape != (batch, k, *grad.shape[2:]) or factors.shape != indices.shape:
        raise ValueError(
            f"scale_channel_winners_: expected `indices` and `factors` shaped {(batch, k, *grad.shape[2:])}, but got "
            f"{tuple(indices.shape)} and {tuple(factors.shape)}."
        )
    indices, factors = indices.contiguous(), factors.to(torch.float32).contiguous()
    if library().ksparse_scale_channel_winners(
        grad.data_ptr(),
        indices.data_ptr(),
        factors.data_ptr(),
        batch,
        channels,
        math.prod(grad.shape[2:]),
        k,
        torch.get_num_threads(),
    ):
        raise IndexError(f"scale_channel_winners_: an index in `indices` is outside [0, {channels}).")
    return grad


def _run_channels(
    caller: str,
    x: Tensor,
    k: int,
    indices: Tensor | None,
    boost: Tensor | None,
    by_magnitude: bool,
    relu: bool,
    counts: bool,
    vectorized: bool,
    per_sample: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(output, bits, counts)`` of the channel kernel ``ksparse_<caller>``; ``ksparse_select_channels`` also
    writes ``indices``, if given, and counts per sample with ``per_sample``."""
    batch, channels = x.shape[:2]
    positions = math.prod(x.shape[2:])
    factors = _boost_factors(boost, channels, caller)
    out = torch.empty_like(x)
    bits = torch.empty(batch, (channels * positions + 7) // 8, dtype=torch.uint8)
    wins = torch.zeros(*([batch] if per_sample else []), channels, dtype=torch.int64) if counts else None
    status = getattr(library(), f"ksparse_{caller}")(
        x.data_ptr(),
        None if factors is None else factors.data_ptr(),
        int(by_magnitude),
        int(relu),
        out.data_ptr(),
        *([None if indices is None else indices.data_ptr()] if caller == "select_channels" else []),
        bits.data_ptr(),
        None if wins is None else wins.data_ptr(),
        *([int(per_sample)] if caller == "select_channels" else []),
        batch,
        channels,
        positions,
        k,
        int(vectorized),
        torch.get_num_threads(),
    )
    if status == 1:
        raise ValueError(f"{caller}: `k` must be in [1, {min(channels, CHANNELS_MAX_K)}], but got {k}.")
    if status:
        raise MemoryError("ksparse_pl's channel top-k kernel could not allocate its buffers")
    return out, bits, wins


def take_bits_rows(src: Tensor, bits: Tensor, factors: Tensor | None = None) -> Tensor:
    """A tensor like ``src``: ``src`` where the bit of :func:`keep_at_least_rows`' ``bits`` is set, 0 elsewhere.

    ``factors``: ``(rows, G)`` with ``G`` dividing the row length ``n``: the kept entries of row ``r`` are also
    multiplied by ``factors[r, i // (n // G)]`` (a factor per group of ``n // G`` entries: a channel's positions
    in a row of the channel kernel's bits), in float32.
    """
    n = src.shape[-1]
    rows = _as_rows(src)
    _check_bits("take_bits_rows", bits, rows)
    if factors is not None:
        groups = factors.shape[1] if factors.dim() == 2 else 0
        if groups < 1 or n % groups or factors.shape[0] != rows.shape[0] or not factors.is_cpu:
            raise ValueError(
                f"take_bits_rows: expected CPU `factors` of shape ({rows.shape[0]}, G) with G dividing {n}, but got "
                f"{tuple(factors.shape)} on {factors.device}."
            )
        factors = factors.to(torch.float32).contiguous()
    out = torch.empty_like(rows)
    if rows.shape[0]:
        library().ksparse_take_bits_rows(
            rows.data_ptr(),
            bits.data_ptr(),
            None if factors is None else factors.data_ptr(),
            0 if factors is None else factors.shape[1],
            out.data_ptr(),
            rows.shape[0],
            n,
            torch.get_num_threads(),
        )
    return out if src.dim() == 2 else out.view(src.shape)


def take_bits_rows_at(src: Tensor, bits: Tensor, indices: Tensor, factors: Tensor) -> Tensor:
    """:func:`take_bits_rows`, with the kept entries at ``indices`` also multiplied by ``factors``: the gradient of
    winners with a factor each (sensitivity along rows).

    ``indices``: int64, ``src``'s shape but ``k`` along the last dim (each row's entries, in any order, each at most
    once); ``factors``: shaped like ``indices``, applied in float32. An entry whose bit is clear stays 0 whatever
    its factor. The masking reads the gradient in order and the k products land in the row while it is in cache.
    """
    n, k = src.shape[-1], indices.shape[-1]
    rows = _as_rows(src)
    _check_bits("take_bits_rows_at", bits, rows)
    _check_indices("take_bits_rows_at", indices, src)
    if not factors.is_cpu or factors.shape != indices.shape:
        raise ValueError(
            f"take_bits_rows_at: expected CPU `factors` shaped like `indices` {tuple(indices.shape)}, but got "
            f"{tuple(factors.shape)} on {factors.device}."
        )
    index_rows, factor_rows = _as_rows(indices), _as_rows(factors.to(torch.float32))
    out = torch.empty_like(rows)
    if rows.shape[0] and library().ksparse_take_bits_rows_at(
        rows.data_ptr(),
        bits.data_ptr(),
        index_rows.data_ptr(),
        factor_rows.data_ptr(),
        out.data_ptr(),
        rows.shape[0],
        n,
        k,
        torch.get_num_threads(),
    ):
        raise IndexError(f"take_bits_rows_at: an index in `indices` is outside [0, {n}) (the last dim of `src`).")
    return out if src.dim() == 2 else out.view(src.shape)


def _check_bits(caller: str, bits: Tensor, rows: Tensor) -> None:
    """Refuse ``bits`` that are not one contiguous uint8 row of bits per row of ``rows``."""
    expected = (rows.shape[0], (rows.shape[1] + 7) // 8)
    if bits.dtype != torch.uint8 or bits.shape != expected or not bits.is_contiguous():
        raise ValueError(
            f"{caller}: expected contiguous uint8 `bits` of shape {expected}, but got {bits.dtype} {tuple(bits.shape)}."
        )


def _check_indices(caller: str, indices: Tensor, src: Tensor) -> None:
    """Refuse ``indices`` that are not int64 CPU winners of ``src``'s rows (its shape but the last dim)."""
    if indices.dtype != torch.int64 or not indices.is_cpu or indices.shape[:-1] != src.shape[:-1]:
        raise ValueError(
            f"{caller}: expected int64 CPU `indices` shaped {(*src.shape[:-1], indices.shape[-1])}, but got "
            f"{indices.dtype} {tuple(indices.shape)} on {indices.device}."
        )


def _boost_factors(boost: Tensor | None, n: int, caller: str) -> Tensor | None:
    """``boost`` as the kernels read it (contiguous float32), checked to be a CPU ``(n,)`` tensor."""
    if boost is None:
        return None
    if boost.shape != (n,) or not boost.is_cpu:
        raise ValueError(
            f"{caller}: expected a CPU `boost` of shape ({n},), but got {tuple(boost.shape)} on {boost.device}."
        )
    return boost.to(torch.float32).contiguous()


def _as_rows(t: Tensor) -> Tensor:
    """``t`` as a contiguous matrix of its last-dim rows, the kernels' layout (``t`` itself if it is one)."""
    # Skipping reshape() and contiguous() for the usual (B, n) input matters: each call costs about a
    # microsecond of Python, several times over per layer step.
    return t if t.dim() == 2 and t.is_contiguous() else t.reshape(-1, t.shape[-1]).contiguous()


@functools.lru_cache(maxsize=256)
def _normal_quantiles(k: int, n: int) -> tuple[float, float]:
    """Where the kernel's search starts, in standard deviations above a row's mean (normal rows): the
    threshold that ``k`` of ``n`` scores pass, and the lower one that ``2k`` pass, to which the kernel first
    compacts the row (NaN: no compaction, when ``2k`` is over half the row and it would save little). From the
    second row of a thread's rows on, the kernel aims where the rows before had their threshold instead, and compacts
    just below it, unless those positions spread wider than these two quantiles lie apart."""
    normal = statistics.NormalDist()
    z = normal.inv_cdf(1 - k / n) if k < n else 0.0
    return z, normal.inv_cdf(1 - 2 * k / n) if 4 * k <= n else math.nan


def take_rows(src: Tensor, indices: Tensor, relu: bool = False) -> tuple[Tensor, Tensor]:
    """A tensor like ``src``, zero but at ``indices`` (last dim), where it holds ``src`` (ReLU'd with ``relu``), and
    the bits of where its gradient passes (as :func:`select_rows`' ``bits``, for :func:`take_bits_rows`)."""
    n, k = src.shape[-1], indices.shape[-1]
    _check_indices("take_rows", indices, src)
    rows = _as_rows(src)
    index_rows = _as_rows(indices)
    # The kernel zeroes each row and writes its winners in one visit, on torch's threads.
    out = torch.empty_like(rows)
    bits = torch.empty(rows.shape[0], (n + 7) // 8, dtype=torch.uint8)
    if rows.shape[0] and library().ksparse_take_rows(
        rows.data_ptr(),
        index_rows.data_ptr(),
        int(relu),
        out.data_ptr(),
        bits.data_ptr(),
        rows.shape[0],
        n,
        k,
        torch.get_num_threads(),
    ):
        raise IndexError(f"take_rows: an index in `indices` is outside [0, {n}) (the last dim of `src`).")
    return (out if src.dim() == 2 else out.view(src.shape)), bits
