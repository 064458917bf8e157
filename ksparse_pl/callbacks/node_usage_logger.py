"""How often each unit of each sparse layer is selected: dead units, usage entropy, histograms, plots."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from torch import Tensor
from typing_extensions import override

from ksparse_pl.callbacks._layers import require_sparse_layers
from ksparse_pl.callbacks._plots import figure_to_array, log_histogram, log_image, log_scalars, takes_images


def usage_statistics(counts: Tensor) -> dict[str, float]:
    """``dead_fraction`` (share of units never selected) and ``entropy`` (of the usage distribution,
    over its maximum ``log(n)``; 1 is perfectly even use) of per-unit selection ``counts``.

    Example:
        >>> import torch
        >>> usage_statistics(torch.tensor([5, 5, 0, 0]))
        {'dead_fraction': 0.5, 'entropy': 0.5}
    """
    counts = counts.double()
    total = counts.sum()
    p = counts[counts > 0] / total
    entropy = float(-(p * p.log()).sum() / math.log(len(counts))) if len(counts) > 1 else 1.0
    return {"dead_fraction": float((counts == 0).double().mean()), "entropy": entropy}


def binned_usage(counts: Tensor, max_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit counts as histogram bins over the unit index; adjacent units are summed into at most
    ``max_bins`` bins (W&B keeps 512). Returns ``(heights, edges)``."""
    n = len(counts)
    bins = min(n, max_bins)
    edges = np.linspace(0, n, bins + 1)
    unit_bin = np.minimum((np.arange(n) * bins) // n, bins - 1)
    heights = np.bincount(unit_bin, weights=counts.double().cpu().numpy(), minlength=bins)
    return heights, edges


class SortedUsagePlot:
    """Per-unit selection counts, most used first, rendered as an RGB image, on one figure kept for every render.

    A render on a fresh figure took about 90 ms on a 2-core Zen 3 and one on a kept figure 60 ms (1024 units; most of
    the rest is drawing the tick labels), and :class:`NodeUsageLogger` renders one per layer at every log.

    Example:
        >>> import torch
        >>> SortedUsagePlot().render(torch.tensor([3, 0, 5]), "layer").shape
        (300, 600, 3)
    """

    def __init__(self) -> None:
        self._figure = Figure(figsize=(6, 3), dpi=100)
        self._axes = self._figure.add_subplot()
        self._axes.set_xlabel("unit (sorted by use)")
        self._axes.set_ylabel("times selected")
        # Fixed margins: tight_layout cost 2-3x more to render.
        self._figure.subplots_adjust(left=0.14, right=0.97, bottom=0.16, top=0.9)
        # Fixed places for the axis labels (where matplotlib puts the x label; the y label clear of tick labels up
        # to 6 digits, beyond which they turn to powers of ten): placing them and the title by measuring the tick
        # labels took about a quarter of a render.
        self._axes.xaxis.set_label_coords(0.5, -0.1314)
        self._axes.yaxis.set_label_coords(-0.135, 0.5)
        self._area: Any = None

    def render(self, counts: Tensor, title: str) -> np.ndarray:
        """The plot of ``counts`` (per unit) under ``title``, as an (H, W, 3) uint8 array."""
        values = torch.sort(counts.double().cpu(), descending=True).values.numpy()
        if self._area is not None:
            self._area.remove()
        # One filled polygon: bars per unit cost 2-3x more to render.
        self._area = self._axes.fill_between(np.arange(len(values)), values, color="tab:blue", linewidth=0)
        # Limits from these counts alone (autoscaling would also keep the removed polygons' extent).
        self._axes.set_xlim(0, max(len(values) - 1, 1))
        self._axes.set_ylim(0, max(float(values[0]) if len(values) else 0.0, 1.0) * 1.05)
        self._axes.set_title(title, fontsize=9, y=1.0)  # where matplotlib puts it, without measuring what is above
        return figure_to_array(self._figure)


class NodeUsageLogger(pl.Callback):
    """Log, per sparse layer, how often each unit was selected during an interval of training.

    Every ``every_n_steps`` optimizer steps, or at the end of every training epoch when that is
    ``None``: scalars ``usage/<layer>/dead_fraction`` (units never selected in the interval) and
    ``usage/<layer>/entropy`` (usage entropy over its maximum) to every logger; the per-unit counts as a
    histogram ``usage/<layer>/histogram`` over the unit index (at most ``max_bins`` bins; wide layers are
    binned) to W&B and TensorBoard; and a sorted per-unit usage plot ``usage/<layer>/sorted`` to W&B.

    The counts come from the layers' ``selection_count`` buffers, which hold the training selections of
    all processes, so the figures do not depend on the number of ranks; only rank zero logs.

    Args:
        every_n_steps: logging interval in optimizer steps; ``None`` logs once per epoch.
        max_bins: most histogram bins per layer (W&B keeps at most 512).
        log_histogram: send histograms.
        log_image: send the sorted usage plots.

    Raises:
        ValueError: an argument out of range; at setup, a model with no sparse layer.

    Example:
        >>> callback = NodeUsageLogger(every_n_steps=100)
    """

    def __init__(
        self, every_n_steps: int | None = None, max_bins: int = 512, log_histogram: bool = True, log_image: bool = True
    ) -> None:
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1
        ):
            raise ValueError(
                f"NodeUsageLogger: expected `every_n_steps` to be an int >= 1 or None, got {every_n_steps!r}."
            )
        if isinstance(max_bins, bool) or not isinstance(max_bins, int) or not 1 <= max_bins <= 512:
            raise ValueError(f"NodeUsageLogger: expected `max_bins` to be an int in [1, 512], but got {max_bins!r}.")
        self.every_n_steps = every_n_steps
        self.max_bins = max_bins
        self.log_histogram = log_histogram
        self.log_image = log_image
        self._since: dict[str, Tensor] = {}
        self._plots: dict[str, SortedUsagePlot] = {}  # rank zero's figures, one per layer, kept between logs

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            require_sparse_layers(self, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name, layer in require_sparse_layers(self, pl_module).items():
            if name not in self._since:  # a resumed run keeps the loaded interval start
                self._since[name] = layer.selection_count.detach().clone()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.every_n_steps is not None and trainer.global_step % self.every_n_steps == 0:
            self.log_usage(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_steps is None:
            self.log_usage(trainer, pl_module)

    def log_usage(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        """Log the counts since the last call and start a new interval; returns ``{layer: counts}``."""
        interval = {}
        for name, layer in require_sparse_layers(self, pl_module).items():
            current = layer.selection_count.detach().clone()
            interval[name] = current - self._since.get(name, torch.zeros_like(current)).to(current.device)
            self._since[name] = current
        if trainer.is_global_zero and not trainer.sanity_checking:
            for name, counts in interval.items():
                self._send(trainer, name, counts.cpu())
        return interval

    def _send(self, trainer: pl.Trainer, name: str, counts: Tensor) -> None:
        stats = usage_statistics(counts)
        log_scalars(trainer, {f"usage/{name}/{key}": value for key, value in stats.items()})
        if self.log_histogram:
            log_histogram(trainer, f"usage/{name}/histogram", *binned_usage(counts, self.max_bins))
        if self.log_image and takes_images(trainer):
            title = f"{name}: dead {stats['dead_fraction']:.1%}, entropy {stats['entropy']:.3f}"
            if name not in self._plots:
                self._plots[name] = SortedUsagePlot()
            log_image(trainer, f"usage/{name}/sorted", self._plots[name].render(counts, title))

    def __getstate__(self) -> dict[str, Any]:
        # The figures only save rendering time: not pickled with the trainer (ddp_spawn), nor copied.
        return {**self.__dict__, "_plots": {}}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"since": {name: t.cpu() for name, t in self._since.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._since = dict(state_dict["since"])
