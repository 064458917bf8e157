"""Makhzani's k schedule: start with many active units and shrink to each layer's target k."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

from ksparse_pl.callbacks._layers import require_sparse_layers, training_progress
from ksparse_pl.functional._checks import check_positive_int
from ksparse_pl.layers import SparseActivation


class KSchedule(pl.Callback):
    """Lower ``k`` linearly from ``k_start`` to each layer's target over the first ``fraction`` of steps.

    Before every training batch, every sparse layer gets
    ``k = round(k_start + (target - k_start) * min(1, progress / fraction))`` where progress is the share
    of optimizer steps done. The target is ``k_end`` if given, else the layer's own ``k`` at the start of
    fit (kept in this callback's state, so a resumed run continues the same schedule). Makhzani & Frey
    start from 100 and reach the target halfway through training.

    Args:
        k_start: k at the first step; at most the width of every scheduled layer.
        k_end: the target k for every layer; ``None`` keeps each layer's own k as its target.
        fraction: share of training over which k decreases, in (0, 1].

    Raises:
        ValueError: an argument out of range; at setup, no sparse layer, or ``k_start``/``k_end`` larger
            than a layer's width.

    Example:
        >>> callback = KSchedule(k_start=100, fraction=0.5)
    """

    def __init__(self, k_start: int, k_end: int | None = None, fraction: float = 0.5) -> None:
        check_positive_int(k_start, "k_start", "KSchedule")
        if k_end is not None:
            check_positive_int(k_end, "k_end", "KSchedule")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"KSchedule: expected `fraction` to be a float in (0, 1], but got {fraction!r}.")
        self.k_start = k_start
        self.k_end = k_end
        self.fraction = float(fraction)
        self._targets: dict[str, int] = {}
        self._layers: dict[str, SparseActivation] = {}  # found once per fit: the hook runs every step

    @property
    def state_key(self) -> str:
        return self._generate_state_key(k_start=self.k_start, k_end=self.k_end, fraction=self.fraction)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for name, layer in require_sparse_layers(self, pl_module).items():
            for arg, value in (("k_start", self.k_start), ("k_end", self.k_end)):
                if value is not None and value > layer.width:
                    raise ValueError(
                        f"KSchedule: `{arg}`={value} is larger than layer {name!r}, which has {layer.width} units."
                    )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._layers = require_sparse_layers(self, pl_module)
        for name, layer in self._layers.items():
            self._targets.setdefault(name, self.k_end if self.k_end is not None else layer.k)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        share = min(1.0, training_progress(trainer, "step") / self.fraction)
        for name, layer in self._layers.items():
            if name in self._targets:
                layer.k = self.k_at(share, self._targets[name])

    def k_at(self, share: float, target: int) -> int:
        """k once ``share`` (in [0, 1]) of the decreasing phase is done."""
        return round(self.k_start + (target - self.k_start) * share)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"targets": dict(self._targets)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._targets = dict(state_dict["targets"])
