"""k-sparse activation for conv feature maps: top-k channels per position, or top-k of the whole map."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from ksparse_pl.functional._checks import check_positive_int
from ksparse_pl.layers._base import SparseActivation

_MODES = ("channel", "global")


class KSparse2d(SparseActivation):
    r"""Top-k sparsity on ``(B, C, H, W)`` feature maps, with per-channel state.

    ``mode="channel"`` keeps the ``k`` largest of the ``C`` channels at every position (Cottonwood's
    SparsifyByChannel2D, Numenta's ``local=True``), for any ``H, W``. ``mode="global"`` keeps the ``k``
    largest of all ``C*H*W`` values of each sample (Numenta's ``local=False``); it needs ``spatial_shape``
    so that ``k`` (or ``percent_on * C*H*W``) is fixed and checked at construction.

    Per-channel state: a channel's duty cycle is the mean over samples of the share of its positions that
    won; for sensitivity a channel counts as selected in a sample if it won at any position, and the
    gradient at all its winning positions is multiplied by its factor. Boosting targets ``k / C``
    (channel mode) or ``k / (C*H*W)`` (global mode).

    On CPU float32, channel mode selects with compiled kernels: on a contiguous input with at most 16 winners
    per position, in the input's own layout; otherwise (more winners, a channels-last input) on a channels-last
    copy, returning its output in that layout (``torch.channels_last``; convolutions take it as it is, ``view``
    needs ``reshape`` instead).

    Args:
        channels: number of channels ``C``.
        k: winners per position (channel mode) or per sample (global mode).
        percent_on: share kept instead of ``k``: of ``C`` (channel) or of ``C*H*W`` (global).
        mode: ``"channel"`` or ``"global"``.
        spatial_shape: ``(H, W)``, required for ``mode="global"``; when given in channel mode, inputs are
            checked against it.
        **others: as :class:`~ksparse_pl.KSparse`.

    Example:
        >>> import torch
        >>> layer = KSparse2d(8, k=2)
        >>> out = layer(torch.randn(2, 8, 5, 5))
        >>> (out != 0).sum(dim=1).unique()
        tensor([2])
        >>> g = KSparse2d(8, percent_on=0.1, mode="global", spatial_shape=(5, 5))
        >>> g.k, (g(torch.randn(2, 8, 5, 5)) != 0).flatten(1).sum(dim=1)
        (20, tensor([20, 20]))
    """

    _default_percent_on: float | None = None

    def __init__(
        self,
        channels: int,
        k: int | None = None,
        *,
        percent_on: float | None = None,
        mode: Literal["channel", "global"] = "channel",
        spatial_shape: tuple[int, int] | None = None,
        k_inference_factor: float = 1.0,
        by_magnitude: bool = False,
        relu: bool = False,
        boost_strength: float = 0.0,
        boost_strength_factor: float = 1.0,
        duty_cycle_period: int = 1000,
        sensitivity: bool = False,
        s_max: float = 10.0,
        tau: float = 100.0,
        threshold_mode: bool = False,
    ) -> None:
        check_positive_int(channels, "channels")
        if mode not in _MODES:
            raise ValueError(f"Expected `mode` to be one of {_MODES}, but got {mode!r}.")
        if spatial_shape is not None:
            spatial_shape = _check_spatial_shape(spatial_shape)
        elif mode == "global":
            raise ValueError("`mode='global'` needs `spatial_shape=(H, W)` so that k over C*H*W is fixed up front.")
        area = spatial_shape[0] * spatial_shape[1] if spatial_shape else 1
        super().__init__(
            channels,
            channels * area if mode == "global" else channels,
            k,
            percent_on,
            default_percent_on=self._default_percent_on,
            k_inference_factor=k_inference_factor,
            by_magnitude=by_magnitude,
            relu=relu,
            boost_strength=boost_strength,
            boost_strength_factor=boost_strength_factor,
            duty_cycle_period=duty_cycle_period,
            sensitivity=sensitivity,
            s_max=s_max,
            tau=tau,
            threshold_mode=threshold_mode,
        )
        self.mode = mode
        self.spatial_shape = spatial_shape
        self._area = area
        self._dim = 1 if mode == "channel" else -1
        self._per_sample_sensitivity = mode == "channel"

    @property
    def channels(self) -> int:
        return self.units

    def _check_shape(self, x: Tensor) -> None:
        ok = x.dim() == 4 and x.shape[1] == self.units
        if ok and self.spatial_shape is not None:
            ok = tuple(x.shape[2:]) == self.spatial_shape
        if not ok:
            hw = self.spatial_shape if self.spatial_shape is not None else ("H", "W")
            raise ValueError(
                f"Expected input of shape (B, C={self.units}, {hw[0]}, {hw[1]}) for {type(self).__name__}, "
                f"but got {tuple(x.shape)}."
            )

    def _candidates(self, x: Tensor) -> Tensor:
        return x if self.mode == "channel" else x.reshape(x.shape[0], -1)  # global: (B, C, H, W) -> (B, C*H*W)

    def _restore(self, out: Tensor, x: Tensor) -> Tensor:
        return out.view(x.shape)

    def _positions(self, candidates: Tensor) -> int:
        return candidates.shape[2] * candidates.shape[3] if self.mode == "channel" else self._area

    def _unit_ids(self, indices: Tensor) -> Tensor:
        return indices if self.mode == "channel" else indices.div(self._area, rounding_mode="floor")

    def _unit_counts(self, candidate_counts: Tensor) -> Tensor:
        # channel mode: the candidates are the channels; global: channel-major (C*H*W,) positions
        return candidate_counts if self.mode == "channel" else candidate_counts.view(self.units, -1).sum(1)

    def _per_candidate(self, per_unit: Tensor) -> Tensor:
        if self.mode == "channel":
            return per_unit.view(-1, 1, 1)  # (C,) -> (C, 1, 1)
        return per_unit.repeat_interleave(self._area)  # (C,) -> (C*H*W,)

    def _per_sample_per_candidate(self, per_sample_unit: Tensor) -> Tensor:
        if self.mode == "channel":
            return per_sample_unit[:, :, None, None]  # (B, C) -> (B, C, 1, 1)
        return per_sample_unit.repeat_interleave(self._area, dim=1)  # (B, C) -> (B, C*H*W)

    def _hits_from_mask(self, mask: Tensor) -> Tensor:
        return mask.reshape(mask.shape[0], self.units, -1).sum(-1)  # (B, C, H*W) -> (B, C)

    def extra_repr(self) -> str:
        shape = f", spatial_shape={self.spatial_shape}" if self.spatial_shape is not None else ""
        return f"channels={self.units}, mode={self.mode!r}{shape}, " + super().extra_repr()


class KWinners2d(KSparse2d):
    """:class:`KSparse2d` with Numenta's defaults: ``percent_on=0.1``, ``boost_strength=1.0``,
    ``boost_strength_factor=0.9``, ``k_inference_factor=1.5``, ``duty_cycle_period=1000``.

    Example:
        >>> layer = KWinners2d(20)
        >>> layer.k, layer.k_inference
        (2, 3)
    """

    _default_percent_on = 0.1

    def __init__(
        self,
        channels: int,
        k: int | None = None,
        *,
        percent_on: float | None = None,
        mode: Literal["channel", "global"] = "channel",
        spatial_shape: tuple[int, int] | None = None,
        k_inference_factor: float = 1.5,
        by_magnitude: bool = False,
        relu: bool = False,
        boost_strength: float = 1.0,
        boost_strength_factor: float = 0.9,
        duty_cycle_period: int = 1000,
        sensitivity: bool = False,
        s_max: float = 10.0,
        tau: float = 100.0,
        threshold_mode: bool = False,
    ) -> None:
        super().__init__(
            channels,
            k,
            percent_on=percent_on,
            mode=mode,
            spatial_shape=spatial_shape,
            k_inference_factor=k_inference_factor,
            by_magnitude=by_magnitude,
            relu=relu,
            boost_strength=boost_strength,
            boost_strength_factor=boost_strength_factor,
            duty_cycle_period=duty_cycle_period,
            sensitivity=sensitivity,
            s_max=s_max,
            tau=tau,
            threshold_mode=threshold_mode,
        )


def _check_spatial_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if not (isinstance(shape, (tuple, list)) and len(shape) == 2 and all(isinstance(s, int) and s >= 1 for s in shape)):
        raise ValueError(f"Expected `spatial_shape` to be (H, W) with positive ints, but got {shape!r}.")
    return (shape[0], shape[1])
