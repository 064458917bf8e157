"""Finding our layers inside any LightningModule, and the progress of training, for the callbacks."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
from torch import nn

from ksparse_pl.layers import SparseActivation


def sparse_layers(
    module: nn.Module, where: Callable[[SparseActivation], bool] = lambda _: True
) -> dict[str, SparseActivation]:
    """``{qualified name: layer}`` for every sparse activation layer in ``module`` that ``where`` accepts."""
    return {name: m for name, m in module.named_modules() if isinstance(m, SparseActivation) and where(m)}


def require_sparse_layers(
    callback: pl.Callback,
    pl_module: nn.Module,
    where: Callable[[SparseActivation], bool] = lambda _: True,
    what: str = "sparse layer (KSparse, KWinners, KSparse2d, KWinners2d)",
) -> dict[str, SparseActivation]:
    """:func:`sparse_layers`, raising an error that names the callback when there is none."""
    layers = sparse_layers(pl_module, where)
    if not layers:
        raise ValueError(
            f"{type(callback).__name__} found no {what} in {type(pl_module).__name__}; "
            "add one to the model or remove the callback."
        )
    return layers


def training_progress(trainer: pl.Trainer, interval: str) -> float:
    """Share of training done, in [0, 1]: by optimizer steps (``"step"``) or by epochs (``"epoch"``)."""
    if interval == "epoch":
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        return min(1.0, trainer.current_epoch / total)
    total_steps = trainer.estimated_stepping_batches
    if not total_steps or total_steps == float("inf"):
        raise ValueError("Scheduling by step needs a finite training length: set `max_steps` or `max_epochs`.")
    return min(1.0, trainer.global_step / total_steps)
