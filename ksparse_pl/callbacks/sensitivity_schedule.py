"""Sensitivity decay scheduling: anneal ``s_max`` (and optionally ``tau``) of sensitivity layers."""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
from typing_extensions import override

from ksparse_pl.callbacks._layers import require_sparse_layers, training_progress
from ksparse_pl.callbacks._schedule import ScheduleKind, check_schedule, scheduled_value
from ksparse_pl.layers import SparseActivation


class SensitivitySchedule(pl.Callback):
    """Anneal every sensitivity-enabled layer's ``s_max`` from its value at the start of fit to ``s_max_final``.

    The value is set before every training batch (``interval="step"``, progress = optimizer steps done
    over the total) or at the start of every epoch (``interval="epoch"``, progress = epochs done over
    ``max_epochs``). ``tau`` follows the same curve to ``tau_final`` when that is given. The starting
    values are kept in this callback's state, so a resumed run continues the same curve.

    Args:
        s_max_final: ``s_max`` at the end of training, ``>= 1`` (1 turns sensitivity off).
        schedule: ``"constant"`` (the final value from the start), ``"linear"``, ``"cosine"`` or
            ``"exponential"``.
        tau_final: ``tau`` at the end of training, ``>= 1``; ``None`` leaves ``tau`` alone.
        interval: ``"step"`` or ``"epoch"``.

    Raises:
        ValueError: an argument out of range; at setup, a model with no sensitivity-enabled layer.

    Example:
        >>> callback = SensitivitySchedule(s_max_final=1.0, schedule="cosine")
    """

    def __init__(
        self,
        s_max_final: float = 1.0,
        schedule: ScheduleKind = "linear",
        tau_final: float | None = None,
        interval: Literal["step", "epoch"] = "step",
    ) -> None:
        check_schedule("SensitivitySchedule", schedule)
        for name, value in (("s_max_final", s_max_final), ("tau_final", tau_final)):
            if value is not None and (not isinstance(value, (int, float)) or not value >= 1):
                raise ValueError(f"SensitivitySchedule: expected `{name}` to be a number >= 1, but got {value!r}.")
        if interval not in ("step", "epoch"):
            raise ValueError(f"SensitivitySchedule: expected `interval` 'step' or 'epoch', but got {interval!r}.")
        self.s_max_final = float(s_max_final)
        self.tau_final = None if tau_final is None else float(tau_final)
        self.schedule = schedule
        self.interval = interval
        self._start: dict[str, tuple[float, float]] = {}
        self._layers: dict[str, SparseActivation] = {}  # found once per fit: the hooks run every step

    @property
    def state_key(self) -> str:
        return self._generate_state_key(s_max_final=self.s_max_final, schedule=self.schedule, tau_final=self.tau_final)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            require_sparse_layers(self, pl_module, lambda m: m.use_sensitivity, "layer with `sensitivity=True`")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        layers = require_sparse_layers(self, pl_module, lambda m: m.use_sensitivity, "layer with `sensitivity=True`")
        for name, layer in layers.items():
            self._start.setdefault(name, (layer.s_max, layer.tau))  # a resumed run keeps the loaded start
        self._layers = {name: layer for name, layer in layers.items() if name in self._start}

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "epoch":
            self._apply(trainer, pl_module)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.interval == "step":
            self._apply(trainer, pl_module)

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        progress = training_progress(trainer, self.interval)
        for name, layer in self._layers.items():
            s_max, tau = self._start[name]
            layer.s_max = scheduled_value(self.schedule, s_max, self.s_max_final, progress)
            if self.tau_final is not None:
                layer.tau = scheduled_value(self.schedule, tau, self.tau_final, progress)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"start": dict(self._start)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._start = {name: (float(s_max), float(tau)) for name, (s_max, tau) in state_dict["start"].items()}
