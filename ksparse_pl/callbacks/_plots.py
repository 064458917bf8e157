"""Rendering figures to arrays and sending histograms and images to whichever loggers can take them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger


def figure_to_array(figure: Figure) -> np.ndarray:
    """An (H, W, 3) uint8 RGB rendering of ``figure``, without pyplot or a display."""
    # A figure drawn again keeps its canvas (and the renderer in it): a new one took an eighth of a redraw.
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def log_histogram(trainer: pl.Trainer, key: str, heights: np.ndarray, edges: np.ndarray) -> None:
    """A histogram given by bin ``heights`` and ``len(heights) + 1`` ``edges``, to W&B and TensorBoard."""
    import wandb

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            histogram = wandb.Histogram(np_histogram=(heights.tolist(), edges.tolist()))
            logger.experiment.log({key: histogram, "trainer/global_step": trainer.global_step})
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_histogram_raw(
                key,
                min=float(edges[0]),
                max=float(edges[-1]),
                num=int(heights.sum()),
                sum=float((heights * (edges[:-1] + edges[1:]) / 2).sum()),
                sum_squares=float((heights * ((edges[:-1] + edges[1:]) / 2) ** 2).sum()),
                bucket_limits=edges[1:].tolist(),
                bucket_counts=heights.tolist(),
                global_step=trainer.global_step,
            )


def takes_images(trainer: pl.Trainer) -> bool:
    """Whether a logger that :func:`log_image` sends to is in use (so that a figure is worth rendering)."""
    return any(isinstance(logger, WandbLogger) for logger in trainer.loggers)


def log_image(trainer: pl.Trainer, key: str, image: np.ndarray, caption: str | None = None) -> None:
    """An (H, W, C) image to W&B, when a WandbLogger is in use."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            kwargs: dict[str, Any] = {"caption": [caption]} if caption else {}
            logger.log_image(key=key, images=[image], step=trainer.global_step, **kwargs)


def log_scalars(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Scalars to every logger, at the current global step."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
