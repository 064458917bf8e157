"""Accuracy of an image classifier under Numenta's pixel noise, level by level, and the noise score."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader
from typing_extensions import override

from ksparse_pl.callbacks._plots import figure_to_array, log_image, log_scalars
from ksparse_pl.functional.noise import add_pixel_noise

NUMENTA_LEVELS = [round(0.05 * i, 2) for i in range(11)]


class NoiseRobustness(pl.Callback):
    """Evaluate any classifier taking [0, 1] images on the test set with pixel noise (Numenta's protocol).

    At each level ``eta``, every test image gets exactly ``int(H*W*eta)`` distinct pixels set to the
    fill value, chosen with a generator seeded from ``seed`` and the level (the same pixels for every
    model). Results: accuracy per level, the noise score (correct answers summed over all levels; max
    levels x test images), a curve image and a markdown table, logged as ``noise/accuracy_<eta>``,
    ``noise/score`` and ``noise/curve`` and written to ``<default_root_dir>/noise_robustness.md``.

    Args:
        levels: noise levels in [0, 1]; default 0, 0.05, ..., 0.5.
        fill_value: raw pixel value written; default the value that normalizes to ``normalized_fill``
            with the module's ``mean`` and ``std`` (0.1307 + 2 * 0.3081 for MNIST).
        normalized_fill: the normalized value the default fill maps to.
        seed: seed of the pixel choice.
        run_on: ``"fit_end"`` or ``"test_end"``.

    Example:
        >>> callback = NoiseRobustness(seed=42)
    """

    def __init__(
        self,
        levels: list[float] | None = None,
        fill_value: float | None = None,
        normalized_fill: float = 2.0,
        seed: int = 42,
        run_on: Literal["fit_end", "test_end"] = "fit_end",
    ) -> None:
        self.levels = list(NUMENTA_LEVELS if levels is None else levels)
        if not self.levels or any(not 0 <= level <= 1 for level in self.levels):
            raise ValueError(f"NoiseRobustness: expected `levels` in [0, 1], but got {levels!r}.")
        if run_on not in ("fit_end", "test_end"):
            raise ValueError(f"NoiseRobustness: expected `run_on` 'fit_end' or 'test_end', but got {run_on!r}.")
        self.fill_value = fill_value
        self.normalized_fill = normalized_fill
        self.seed = seed
        self.run_on = run_on
        self.results: dict[float, float] = {}
        self.score = 0

    def _fill(self, pl_module: pl.LightningModule) -> float:
        if self.fill_value is not None:
            return self.fill_value
        mean, std = getattr(pl_module, "mean", None), getattr(pl_module, "std", None)
        if mean is None or std is None:
            raise ValueError(
                f"NoiseRobustness: {type(pl_module).__name__} has no `mean` and `std` to derive the fill value "
                "from; pass `fill_value`."
            )
        return float(mean + self.normalized_fill * std)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fill(pl_module)
        if getattr(trainer, "datamodule", None) is None:
            raise ValueError("NoiseRobustness needs a datamodule with a test_dataloader.")

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run_on == "fit_end":
            self.evaluate(trainer, pl_module)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run_on == "test_end":
            self.evaluate(trainer, pl_module)

    @torch.no_grad()
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[float, float]:
        """Run the protocol now; returns ``{level: accuracy}`` and sets ``self.score``."""
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        datamodule.setup("test")
        loader: DataLoader = datamodule.test_dataloader()
        fill, was_training = self._fill(pl_module), pl_module.training
        pl_module.eval()
        correct = torch.zeros(len(self.levels), dtype=torch.long, device=pl_module.device)
        total = torch.zeros((), dtype=torch.long, device=pl_module.device)
        for index, level in enumerate(self.levels):
            generator = torch.Generator().manual_seed(self.seed * 1000 + index)
            for x, y, *_ in loader:
                noisy = add_pixel_noise(x, level, fill, generator).to(pl_module.device)
                correct[index] += (pl_module(noisy).argmax(dim=1) == y.to(pl_module.device)).sum()
                total += len(y) if index == 0 else 0
        pl_module.train(was_training)
        # Every rank evaluates the whole test set with the same pixels (identical models under DDP), so the
        # counts are not summed across ranks; only rank zero reports them.
        self.results = {level: float(c) / float(total) for level, c in zip(self.levels, correct, strict=True)}
        self.score = int(correct.sum())
        if trainer.is_global_zero:
            self._report(trainer, int(total))
        return self.results

    def _report(self, trainer: pl.Trainer, images: int) -> None:
        metrics: dict[str, Any] = {f"noise/accuracy_{level:.2f}": acc for level, acc in self.results.items()}
        metrics["noise/score"] = self.score
        log_scalars(trainer, metrics)
        log_image(trainer, "noise/curve", self._curve())
        rows = [f"| {level:.2f} | {acc:.2%} |" for level, acc in self.results.items()]
        table = "\n".join(["| noise level | accuracy |", "|---|---|", *rows])
        table += f"\n\nNoise score: {self.score} of {images * len(self.levels)} ({images} test images)\n"
        path = Path(trainer.default_root_dir) / "noise_robustness.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table)
        rank_zero_info(f"NoiseRobustness:\n{table}Written to {path}")

    def _curve(self) -> np.ndarray:
        figure = Figure(figsize=(5, 3.5), dpi=100)
        axes = figure.add_subplot()
        axes.plot(list(self.results), [100 * a for a in self.results.values()], marker="o")
        axes.set_xlabel("noise level (share of pixels)")
        axes.set_ylabel("test accuracy (%)")
        axes.set_title(f"noise score {self.score}", fontsize=9)
        axes.grid(alpha=0.3)
        figure.tight_layout()
        return figure_to_array(figure)
