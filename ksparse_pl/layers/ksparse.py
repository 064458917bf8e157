"""k-sparse (top-k) activation over the last dimension: Makhzani & Frey, Numenta's k-winners, Cottonwood."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ksparse_pl.functional._checks import check_float_input, check_positive_int
from ksparse_pl.layers._base import SparseActivation


class KSparse(SparseActivation):
    r"""Keep the ``k`` largest of ``n`` units per sample, zero the rest.

    Input ``(..., n)``; every leading index is one sample (for duty cycles and sensitivity, samples count
    in row-major order). Exactly ``k`` winners per sample, ties included, unless ``threshold_mode``.

    Args:
        n: number of units (size of the last input dimension).
        k: units kept per sample in training, in ``[1, n]``. Give this or ``percent_on``.
        percent_on: share of units kept, in ``(0, 1]``; ``k = round(n * percent_on)``.
        k_inference_factor: in eval mode keep ``min(n, round(k * k_inference_factor))`` units (Makhzani's
            alpha, Numenta's k_inference_factor).
        by_magnitude: rank by ``|x|`` and keep the signs (Cottonwood); default ranks by value.
        relu: also zero negative winners (ReLU after top-k, as in OpenAI's TopK SAE).
        boost_strength: :math:`\beta` of duty-cycle boosting; winners are chosen on
            ``x * exp(beta * (k/n - duty_cycle))`` while the output keeps the unboosted values. ``0`` turns
            boosting off for the life of the layer.
        boost_strength_factor: what :class:`~ksparse_pl.callbacks.DutyCycleBoosting` multiplies
            ``boost_strength`` by after each training epoch, in ``(0, 1]``.
        duty_cycle_period: the duty cycle's averaging period, in samples.
        sensitivity: multiply the gradient of a unit that wins after being idle by its sensitivity
            (Cottonwood; see :func:`ksparse_pl.functional.sensitivity_step`).
        s_max: the bound the sensitivity of an idle unit grows toward, ``>= 1``.
        tau: the sensitivity's time constant in samples, ``>= 1``.
        threshold_mode: keep every unit scoring at least the k-th score; faster on some shapes but ties
            can leave more than ``k`` winners.

    Non-finite input: NaN ranks above every number, so a NaN is always a winner and shows in the output
    (never dropped into a clean-looking zero); ``inf`` is an ordinary large value.

    Raises:
        ValueError: ``k``/``percent_on`` missing, both given or out of range; an option out of its range;
            an input whose last dimension is not ``n``.
        TypeError: an input that is not a floating-point tensor.

    Example:
        >>> import torch
        >>> layer = KSparse(4, k=2)
        >>> layer(torch.tensor([[0.5, -3.0, 2.0, 1.0]]))
        tensor([[0., 0., 2., 1.]])
        >>> layer
        KSparse(n=4, k=2, k_inference=2)
    """

    def __init__(
        self,
        n: int,
        k: int | None = None,
        *,
        percent_on: float | None = None,
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
        check_positive_int(n, "n")
        super().__init__(
            n,
            n,
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

    _default_percent_on: float | None = None
    _rows_are_samples = True

    @property
    def n(self) -> int:
        return self.units

    def select(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The winners of ``x`` ``(B, n)`` without building the sparse output: for callers that use the winners
        directly (the sparse path of :class:`~ksparse_pl.models.SparseAutoencoder`).

        Returns ``(indices, grad_scale)``: the ``(B, k)`` winning units and, in training with sensitivity, the
        factor their gradients get (else None). ``forward(x)`` equals ``keep_winners(x, indices, relu=relu,
        grad_scale=grad_scale)``; like ``forward``, a training call updates the layer's state.

        Raises:
            ValueError: ``x`` is not ``(B, n)``, or the layer is in ``threshold_mode`` (no fixed winner count).
        """
        check_float_input(x)
        if x.dim() != 2 or x.shape[1] != self.units:
            raise ValueError(f"{type(self).__name__}.select expects input (B, n={self.units}), got {tuple(x.shape)}.")
        if self.threshold_mode:
            raise ValueError(f"{type(self).__name__}.select needs exact top-k selection, not threshold_mode.")
        return self._select(x)

    def _check_shape(self, x: Tensor) -> None:
        if x.dim() < 1 or x.shape[-1] != self.units:
            raise ValueError(
                f"Expected input of shape (..., n={self.units}) for {type(self).__name__}, but got {tuple(x.shape)}."
            )

    def _candidates(self, x: Tensor) -> Tensor:
        return x if x.dim() == 2 else x.reshape(-1, self.units)  # (..., n) -> (S, n)

    def _restore(self, out: Tensor, x: Tensor) -> Tensor:
        return out if x.dim() == 2 else out.view(x.shape)

    def _positions(self, candidates: Tensor) -> int:
        return 1

    def _unit_ids(self, indices: Tensor) -> Tensor:
        return indices

    def _unit_counts(self, candidate_counts: Tensor) -> Tensor:
        return candidate_counts

    def _pairs_from_ids(self, unit_ids: Tensor) -> tuple[Tensor, Tensor]:
        # Each unit wins at most once per sample here: the winners are the pairs, no (S, n) mask needed.
        samples, k = unit_ids.shape
        # Under torch.compile the graph builds it: dynamo would trace through the cache, and warn that it does.
        build = _sample_of_each_winner.__wrapped__ if torch.compiler.is_compiling() else _sample_of_each_winner
        return build(samples, k, unit_ids.device), unit_ids.reshape(-1)

    def _scale_from_ids(self, factors: Tensor, pairs: tuple[Tensor, Tensor], unit_ids: Tensor) -> Tensor:
        return factors.view_as(unit_ids)

    def _per_candidate(self, per_unit: Tensor) -> Tensor:
        return per_unit

    def _per_sample_per_candidate(self, per_sample_unit: Tensor) -> Tensor:
        return per_sample_unit

    def _hits_from_mask(self, mask: Tensor) -> Tensor:
        return mask  # one candidate per unit: the mask is the hits (bool sums to int64)

    def extra_repr(self) -> str:
        return f"n={self.units}, " + super().extra_repr()


@functools.lru_cache(maxsize=16)
def _sample_of_each_winner(samples: int, k: int, device: torch.device) -> Tensor:
    """``(samples * k,)``: the sample of each winner of a ``(samples, k)`` winners tensor read in order.

    Kept per shape, as the batch size and k hold for many steps: building it took 30-60 us of every training step
    with sensitivity at 256 x 4096. Its users only read it.
    """
    return torch.arange(samples, device=device).repeat_interleave(k)


class KWinners(KSparse):
    """:class:`KSparse` with Numenta's defaults ("How Can We Be So Dense?").

    ``percent_on=0.1`` when neither ``k`` nor ``percent_on`` is given, ``boost_strength=1.0``,
    ``boost_strength_factor=0.9``, ``k_inference_factor=1.5``, ``duty_cycle_period=1000``.

    Example:
        >>> import torch
        >>> layer = KWinners(20)
        >>> (layer(torch.randn(3, 20)) != 0).sum(dim=1)
        tensor([2, 2, 2])
        >>> layer.k, layer.k_inference
        (2, 3)
    """

    _default_percent_on = 0.1

    def __init__(
        self,
        n: int,
        k: int | None = None,
        *,
        percent_on: float | None = None,
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
            n,
            k,
            percent_on=percent_on,
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
