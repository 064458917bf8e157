"""Lightning pieces the test folders share (importable because ``tests/conftest.py`` puts ``tests/`` on the path)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


def quiet_trainer(root: str | Path | None, callbacks: Sequence[pl.Callback] = (), **options: Any) -> pl.Trainer:
    """A Trainer that logs, prints and saves nothing unless ``options`` say otherwise."""
    defaults = {
        "default_root_dir": root,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    return pl.Trainer(callbacks=list(callbacks), **{**defaults, **options})


class StopAfter(pl.Callback):
    """Interrupt a run planned for more epochs after ``epochs``, as a crash or a time limit would."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 == self.epochs:
            trainer.should_stop = True
