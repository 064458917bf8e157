"""State and options shared by the k-sparse layers; subclasses only say how units map onto the input."""

from __future__ import annotations

import functools
from typing import Any, cast

import torch
from torch import Tensor, nn

from ksparse_pl.functional import (
    boost_factors,
    keep_masked,
    last_selected,
    select_and_keep,
    selection_scores,
    sensitivity_across,
    sensitivity_factors_at,
    sensitivity_step_at,
    threshold_keep,
    threshold_mask,
    update_duty_cycle,
    winner_counts,
    winner_indices,
)
from ksparse_pl.functional._checks import (
    check_at_least,
    check_float_input,
    check_k,
    check_positive,
    check_positive_int,
    inference_k,
    resolve_k,
)
from ksparse_pl.functional.native import native_serves
from ksparse_pl.functional.native_duty_cycle import WinState, add_wins_
from ksparse_pl.functional.native_topk import native_applies
from ksparse_pl.functional.selection import _factors_per_winner, select_rows_adding_wins
from ksparse_pl.layers._distributed import distributed, gather_statistics

# State that must keep full precision whatever dtype the module is cast to (``.half()``, "16-true").
_FLOAT32_STATE = ("duty_cycle", "sensitivity", "boost_strength", "_target_density")


class SparseActivation(nn.Module):
    """Base of :class:`KSparse` and :class:`KSparse2d`: k, inference k, boosting, sensitivity and their state.

    Buffers: ``duty_cycle`` and ``sensitivity`` (one per unit), ``boost_strength`` (scalar),
    ``samples_seen`` (training samples counted so far) and ``selection_count`` (per unit, how many
    times it won in training, positions counted separately for 2D; cumulative, for usage statistics).
    ``k``, ``s_max`` and ``tau`` travel in the module's extra state, so schedules that change them
    resume where they stopped.

    Subclasses define the selection view: :meth:`_candidates` (the tensor whose ``_dim`` holds the
    candidates, one sample per row), :meth:`_unit_ids` (winner index -> state unit), :meth:`_per_candidate`
    (per-unit vector -> broadcastable over the candidates) and :meth:`_positions` (candidates per unit
    per sample).
    """

    _dim: int = -1
    # Whether sensitivity works from per-sample counts (S, units), where units are the candidates along _dim and
    # those counts are smaller than the winners (channel maps: (B, C) against (B, k, H, W) winners).
    _per_sample_sensitivity: bool = False
    _is_replica: bool = False  # set by nn.DataParallel's replicate() on its per-GPU copies
    # Whether each row of the candidates is one sample and each column one unit (the row kernel's win counts are
    # then the units' wins, one position per sample).
    _rows_are_samples: bool = False
    duty_cycle: Tensor
    sensitivity: Tensor
    boost_strength: Tensor
    samples_seen: Tensor
    selection_count: Tensor
    _target_density: Tensor

    def __init__(
        self,
        units: int,
        width: int,
        k: int | None,
        percent_on: float | None,
        *,
        default_percent_on: float | None,
        k_inference_factor: float,
        by_magnitude: bool,
        relu: bool,
        boost_strength: float,
        boost_strength_factor: float,
        duty_cycle_period: int,
        sensitivity: bool,
        s_max: float,
        tau: float,
        threshold_mode: bool,
    ) -> None:
        super().__init__()
        self.units = units
        self.width = width
        self._k = resolve_k(width, k, percent_on, default_percent_on)
        self.k_inference_factor = check_positive(k_inference_factor, "k_inference_factor")
        self.by_magnitude = by_magnitude
        self.relu = relu
        self.boosting = check_at_least(boost_strength, 0.0, "boost_strength") > 0
        self.boost_strength_factor = _check_factor(boost_strength_factor)
        self.duty_cycle_period = check_positive_int(duty_cycle_period, "duty_cycle_period")
        self.use_sensitivity = sensitivity
        self._s_max = check_at_least(s_max, 1.0, "s_max")
        self._tau = check_at_least(tau, 1.0, "tau")
        self.threshold_mode = threshold_mode
        # float32 whatever the default dtype (Lightning's "16-true" builds modules under a half default).
        self.register_buffer("duty_cycle", torch.zeros(units, dtype=torch.float32))
        self.register_buffer("sensitivity", torch.ones(units, dtype=torch.float32))
        self.register_buffer("boost_strength", torch.tensor(float(boost_strength), dtype=torch.float32))
        self.register_buffer("samples_seen", torch.tensor(0, dtype=torch.long))
        self.register_buffer("selection_count", torch.zeros(units, dtype=torch.long))
        # k / width as a tensor for the boost factors: an operation with a Python number first wraps it in one,
        # which cost about as much as the arithmetic on a few thousand units (derived from k, so not saved).
        self.register_buffer("_target_density", _density(self._k, width), persistent=False)

    # --- k and the scheduled settings -------------------------------------------------------------
    @property
    def k(self) -> int:
        """Units kept per sample in training."""
        return self._k

    @k.setter
    def k(self, value: int) -> None:
        value = check_k(value, self.width)
        if value == self._k:  # KSchedule sets k before every batch; the tensor below cost 15-30 us a step
            return
        self._k = value
        # A new tensor rather than fill_: the old one may be shared with other processes (share_memory()).
        self._target_density = _density(self._k, self.width, self._target_density.device)

    @property
    def k_inference(self) -> int:
        """Units kept per sample in eval mode: ``min(width, round(k * k_inference_factor))``."""
        return inference_k(self._k, self.k_inference_factor, self.width)

    @property
    def active_fraction(self) -> float:
        """Share of the candidates kept in training, ``k / width`` (the next layer's effective fan-in ratio)."""
        return self._k / self.width

    @property
    def s_max(self) -> float:
        return self._s_max

    @s_max.setter
    def s_max(self, value: float) -> None:
        self._s_max = check_at_least(value, 1.0, "s_max")

    @property
    def tau(self) -> float:
        return self._tau

    @tau.setter
    def tau(self, value: float) -> None:
        self._tau = check_at_least(value, 1.0, "tau")

    def get_extra_state(self) -> dict[str, Any]:
        return {"k": self._k, "s_max": self._s_max, "tau": self._tau}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.k, self.s_max, self.tau = state["k"], state["s_max"], state["tau"]

    def _apply(self, fn: Any, recurse: bool = True) -> SparseActivation:
        before = {name: getattr(self, name) for name in _FLOAT32_STATE}
        super()._apply(fn, recurse)
        for name, kept in before.items():
            cast = getattr(self, name)
            if cast.dtype != torch.float32:  # the values from before the cast, not rounded through it
                setattr(self, name, kept.to(cast.device, torch.float32))
        return self

    # --- forward -----------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        check_float_input(x)
        self._check_shape(x)
        candidates = self._candidates(x)
        if self.threshold_mode and self.training and self.use_sensitivity:
            out = self._forward_mask_with_sensitivity(candidates)
        elif self.threshold_mode:
            out, counts = threshold_keep(
                candidates,
                self._active_k,
                dim=self._dim,
                by_magnitude=self.by_magnitude,
                boost_factors=self._boost(),
                relu=self.relu,
                counts=self.training,
            )
            if counts is not None:
                self._update_state(self._unit_counts(counts), candidates, None)
        elif self._adds_wins_in_kernel(candidates):
            self._own_state()
            out = select_rows_adding_wins(
                candidates,
                self._k,
                self._win_state(),
                by_magnitude=self.by_magnitude,
                boost_factors=self._boost(),
                relu=self.relu,
            )
        else:
            # Selection, state update and output in one step (one kernel pass over the input on CPU): the
            # update sees the winners before the output is built, and gives their gradient factors.
            sensitivity = self.training and self.use_sensitivity
            per_sample = sensitivity and self._per_sample_sensitivity
            out, _, _ = select_and_keep(
                candidates,
                self._active_k,
                dim=self._dim,
                by_magnitude=self.by_magnitude,
                boost_factors=self._boost(),
                relu=self.relu,
                counts=self.training,
                grad_scale_of=functools.partial(self._record, candidates) if self.training else None,
                indices=sensitivity and not per_sample,  # else unused, and the kernels are faster without
                per_sample=per_sample,
            )
        return self._restore(out, x)

    def _adds_wins_in_kernel(self, candidates: Tensor) -> bool:
        """Whether the row kernel's call also updates the state (see :meth:`_update_state`): in training without
        sensitivity, in one process, where its rows are the samples and its columns the units. Without a second
        kernel call and the Python around it, a ``KSparse`` step took 0.94 of its time at 256 x 1024 and 0.85 at
        1 x 64 (with the buffer reads of :meth:`_buffer`)."""
        return (
            self._rows_are_samples
            and self.training
            and not self.use_sensitivity
            and not self._is_replica
            and native_applies(candidates, self._dim)
            and not distributed()
        )

    def _win_state(self) -> WinState:
        read = self._buffer
        return WinState(read("duty_cycle"), read("selection_count"), read("samples_seen"), self.duty_cycle_period)

    def _buffer(self, name: str) -> Tensor:
        """The buffer ``name`` from its dict, for the reads of every training step: through Module.__getattr__
        each took 0.5 us, a few per cent of a layer's step at the smallest shapes."""
        return cast(Tensor, self._buffers[name])

    @property
    def _active_k(self) -> int:
        return self._k if self.training else self.k_inference

    def _boost(self) -> Tensor | None:
        """The boost factor of every candidate along the unit dim, or None without boosting."""
        if not self.boosting:
            return None
        read = self._buffer
        return self._per_candidate(boost_factors(read("duty_cycle"), read("_target_density"), read("boost_strength")))

    def _scores(self, candidates: Tensor) -> Tensor:
        return selection_scores(candidates, by_magnitude=self.by_magnitude, boost_factors=self._boost())

    def _select(self, candidates: Tensor) -> tuple[Tensor, Tensor | None]:
        """The winners' indices along the unit dim and (training with sensitivity) their gradient factors.

        In training this updates the state with the batch, so each training batch goes through it once.
        """
        indices = winner_indices(
            candidates, self._active_k, dim=self._dim, by_magnitude=self.by_magnitude, boost_factors=self._boost()
        )
        if not self.training:
            return indices, None
        return indices, self._record(candidates, indices, winner_counts(indices, candidates.shape[self._dim]))

    def _record(self, candidates: Tensor, indices: Tensor | None, counts: Tensor | None) -> Tensor | None:
        """Update the state with a training batch's winners (``counts``: wins per candidate index along the
        unit dim, or per sample ``(S, units)``; ``indices``, needed with sensitivity and counts not per sample);
        returns with sensitivity the gradient factors, shaped like ``indices`` or per sample like ``counts``
        (else None)."""
        assert counts is not None  # the callers ask for the counts in training
        if not self.use_sensitivity:
            self._update_state(self._unit_counts(counts), candidates, None)
            return None
        if counts.dim() == 2:  # per sample: a unit's factor applies at all its winning positions in the sample
            pairs = _pairs_of(counts > 0)
            factors = self._update_state(counts.sum(0), candidates, pairs)
            assert factors is not None  # given pairs, the update returns their factors
            return _dense(factors, pairs, counts.shape)
        assert indices is not None  # the callers ask for the winners with sensitivity
        unit_ids = self._unit_ids(indices)
        pairs = self._pairs_from_ids(unit_ids)
        factors = self._update_state(self._unit_counts(counts), candidates, pairs)
        assert factors is not None  # given pairs, the update returns their factors
        return self._scale_from_ids(factors, pairs, unit_ids)

    def _forward_mask_with_sensitivity(self, candidates: Tensor) -> Tensor:
        """Threshold mode in training with sensitivity: the factors need every kept (sample, unit) pair."""
        mask = threshold_mask(self._scores(candidates), self._k, dim=self._dim)
        hits = self._hits_from_mask(mask)  # (S, units)
        pairs = _pairs_of(hits > 0)
        factors = self._update_state(hits.sum(0).long(), candidates, pairs)
        assert factors is not None  # given pairs, the update returns their factors
        grad_scale = self._per_sample_per_candidate(_dense(factors, pairs, hits.shape))
        return keep_masked(candidates, mask, relu=self.relu, grad_scale=grad_scale)

    # --- state updates (training only) -------------------------------------------------------------
    def _update_state(self, counts: Tensor, candidates: Tensor, pairs: tuple[Tensor, Tensor] | None) -> Tensor | None:
        """Update the state with this batch, seen as part of the global batch of all processes.

        ``counts[j]``: how often unit ``j`` won in this process's batch (at any position); ``pairs``: the
        ``(sample, unit)`` selections, for sensitivity. Under ``torch.distributed`` the counts are summed
        and the sensitivity arithmetic runs over the processes' samples in rank order, so every rank
        ends with the state one process would have over the global batch.

        Returns:
            The sensitivity factor of every pair (None without sensitivity).
        """
        if self._is_replica:
            raise RuntimeError(
                f"{type(self).__name__} cannot keep its training statistics under nn.DataParallel (its replicas "
                "are discarded after each forward); use DistributedDataParallel (Lightning strategy='ddp')."
            )
        batch = candidates.shape[0]
        # No no_grad block: nothing here reads a tensor that requires grad (counts, pairs and the buffers), and
        # entering one cost a few microseconds per training step.
        self._own_state()
        if not distributed():
            return self._update_local_state(counts, batch, self._positions(candidates), pairs)
        last = last_selected(*pairs, self.units) if pairs is not None else counts.new_empty(0)
        local = torch.cat([counts, last, counts.new_tensor([batch])])
        gathered, rank = gather_statistics(local)  # (R, n + len(last) + 1)
        sizes = gathered[:, -1]
        factors = None
        if pairs is not None:
            start, final = sensitivity_across(
                gathered[:, self.units : 2 * self.units], sizes, rank, self.sensitivity, self._s_max, self._tau
            )
            factors = sensitivity_factors_at(*pairs, start, batch, self._s_max, self._tau)
            self.sensitivity.copy_(final)
        self._add_wins(gathered[:, : self.units].sum(0), sizes.sum(), self._positions(candidates))
        return factors

    def _update_local_state(
        self, counts: Tensor, batch: int, positions: int, pairs: tuple[Tensor, Tensor] | None
    ) -> Tensor | None:
        """:meth:`_update_state` in a single process: the arithmetic of one rank of one, without gathering."""
        factors = None
        if pairs is not None:
            factors, after = sensitivity_step_at(*pairs, self.sensitivity, batch, self._s_max, self._tau)
            self.sensitivity.copy_(after)
        self._add_wins(counts, batch, positions)
        return factors

    def _add_wins(self, counts: Tensor, total: int | Tensor, positions: int) -> None:
        """Selection counts, samples seen and duty cycle after ``total`` samples, with ``counts[j]`` wins of unit j."""
        if isinstance(total, int) and native_serves(self.duty_cycle, indices=counts):
            # One kernel call instead of about ten small torch operations, with the same float32 arithmetic.
            add_wins_(
                self.duty_cycle,
                self.selection_count,
                self.samples_seen,
                counts.contiguous(),
                total,
                positions,
                self.duty_cycle_period,
            )
            return
        self.selection_count.add_(counts)
        self.samples_seen.add_(total)
        # A unit winning at a share of a sample's positions counts as that share of a sample.
        self.duty_cycle.copy_(
            update_duty_cycle(self.duty_cycle, counts / positions, total, self.samples_seen, self.duty_cycle_period)
        )

    def _own_state(self) -> None:
        """Give the layer its own copy of the state it updates in place, if its memory is shared.

        Processes started from one model in shared memory (``torch.multiprocessing``, ``share_memory()``)
        would otherwise write into each other's state. Only CPU memory is checked: ``Tensor.is_shared`` is
        True for every CUDA tensor, and a model reaches its GPU inside each process anyway.
        """
        # untyped_storage().is_shared() rather than is_shared(): the same answer, without a Python detour
        # that cost a few microseconds every training step.
        duty_cycle = self._buffer("duty_cycle")
        if duty_cycle.is_cpu and duty_cycle.untyped_storage().is_shared():
            for name in ("duty_cycle", "sensitivity", "samples_seen", "selection_count"):
                setattr(self, name, getattr(self, name).clone())

    def _pairs_from_ids(self, unit_ids: Tensor) -> tuple[Tensor, Tensor]:
        """``(sample, unit)`` pairs of the selections, each once (a unit may win at several positions)."""
        flat = unit_ids.reshape(unit_ids.shape[0], -1)  # (S, winners per sample)
        selected = torch.zeros(flat.shape[0], self.units, dtype=torch.bool, device=flat.device).scatter_(1, flat, True)
        return _pairs_of(selected)

    def _scale_from_ids(self, factors: Tensor, pairs: tuple[Tensor, Tensor], unit_ids: Tensor) -> Tensor:
        """Per-pair factors -> the factor of every winner, shaped like ``unit_ids``."""
        return _factors_per_winner(_dense(factors, pairs, (unit_ids.shape[0], self.units)), unit_ids)

    # --- to be defined by subclasses ---------------------------------------------------------------
    def _positions(self, candidates: Tensor) -> int:
        """Candidates per unit per sample (1, or H*W for per-channel state)."""
        raise NotImplementedError

    def _check_shape(self, x: Tensor) -> None:
        raise NotImplementedError

    def _candidates(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _restore(self, out: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _unit_ids(self, indices: Tensor) -> Tensor:
        raise NotImplementedError

    def _unit_counts(self, candidate_counts: Tensor) -> Tensor:
        """Wins per candidate index along the unit dim -> wins per unit."""
        raise NotImplementedError

    def _per_candidate(self, per_unit: Tensor) -> Tensor:
        raise NotImplementedError

    def _per_sample_per_candidate(self, per_sample_unit: Tensor) -> Tensor:
        raise NotImplementedError

    def _hits_from_mask(self, mask: Tensor) -> Tensor:
        """``(S, units)``: how many of each unit's candidates the mask keeps, per sample (bool or integer)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        parts = [f"k={self._k}", f"k_inference={self.k_inference}"]
        if self.by_magnitude:
            parts.append("by_magnitude=True")
        if self.relu:
            parts.append("relu=True")
        if self.boosting:
            parts.append(
                f"boost_strength={float(self.boost_strength):.4g}, boost_strength_factor={self.boost_strength_factor}, "
                f"duty_cycle_period={self.duty_cycle_period}"
            )
        if self.use_sensitivity:
            parts.append(f"sensitivity=True, s_max={self._s_max:g}, tau={self._tau:g}")
        if self.threshold_mode:
            parts.append("threshold_mode=True")
        return ", ".join(parts)


def _pairs_of(selected: Tensor) -> tuple[Tensor, Tensor]:
    """``(sample, unit)`` index pairs where the ``(S, units)`` mask is set, sorted by sample."""
    samples, units = selected.nonzero(as_tuple=True)
    return samples, units


def _dense(values: Tensor, pairs: tuple[Tensor, Tensor], shape: tuple[int, int] | torch.Size) -> Tensor:
    """An ``(S, units)`` tensor holding ``values`` at the ``(sample, unit)`` pairs, 0 elsewhere."""
    return torch.zeros(tuple(shape), dtype=values.dtype, device=values.device).index_put_(pairs, values)


def _density(k: int, width: int, device: torch.device | None = None) -> Tensor:
    return torch.tensor(k / width, dtype=torch.float32, device=device)


def _check_factor(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"Expected `boost_strength_factor` to be a float in (0, 1], but got {value!r}.")
    return float(value)
