"""Numenta's boost-strength decay: multiply each boosted layer's boost strength after every epoch."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from typing_extensions import override

from ksparse_pl.callbacks._layers import require_sparse_layers


def _check_factor(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"DutyCycleBoosting: expected `{name}` to be a float in (0, 1], but got {value!r}.")
    return float(value)


class DutyCycleBoosting(pl.Callback):
    """At the end of every training epoch, ``boost_strength *= factor`` for every layer with boosting.

    The factor is the layer's own ``boost_strength_factor`` (Numenta's default 0.9 for ``KWinners``),
    or ``boost_strength_factor`` here for all layers, or a per-layer value from ``overrides`` keyed by
    the layer's qualified name in the model (``"encoder.1"``). The boost strength is a buffer of the
    layer, so checkpoints carry it and a resumed run continues the decay.

    Args:
        boost_strength_factor: factor for every boosted layer, in (0, 1]; ``None`` uses each layer's own.
        overrides: ``{layer name: factor}`` taking precedence for those layers.

    Raises:
        ValueError: a factor outside (0, 1]; at setup, a model with no boosted layer or an override
            naming no boosted layer.

    Example:
        >>> callback = DutyCycleBoosting(overrides={"encoder.1": 0.85})
    """

    def __init__(self, boost_strength_factor: float | None = None, overrides: dict[str, float] | None = None) -> None:
        self.boost_strength_factor = (
            None if boost_strength_factor is None else _check_factor("boost_strength_factor", boost_strength_factor)
        )
        self.overrides = {name: _check_factor(f"overrides[{name!r}]", v) for name, v in (overrides or {}).items()}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        layers = require_sparse_layers(
            self, pl_module, lambda m: m.boosting, "layer with boosting (boost_strength > 0)"
        )
        unknown = sorted(set(self.overrides) - set(layers))
        if unknown:
            raise ValueError(
                f"DutyCycleBoosting: `overrides` names {unknown}, which are not boosted layers; "
                f"the boosted layers are {sorted(layers)}."
            )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with torch.no_grad():
            for name, layer in pl_module.named_modules():
                if getattr(layer, "boosting", False):
                    layer.boost_strength.mul_(self.factor_for(name, layer.boost_strength_factor))

    def factor_for(self, name: str, layer_factor: float) -> float:
        """The factor applied to the layer called ``name`` whose own factor is ``layer_factor``."""
        if name in self.overrides:
            return self.overrides[name]
        return layer_factor if self.boost_strength_factor is None else self.boost_strength_factor
