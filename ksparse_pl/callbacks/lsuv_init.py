"""LSUV initialization as a callback, run once before training starts."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

from ksparse_pl.functional._checks import check_positive_int
from ksparse_pl.init import lsuv_
from ksparse_pl.models._batch import inputs_of


class LSUVInit(pl.Callback):
    """Data-driven LSUV (:func:`ksparse_pl.init.lsuv_`) on the model once, when fit starts.

    The batch is the given ``data`` tensor, or the first ``num_samples`` training inputs of the
    datamodule. It runs in ``on_fit_start``, after a checkpoint given to ``fit`` has been restored, so a
    resumed run keeps the checkpoint's weights and LSUV is skipped (``setup`` runs before Lightning
    knows of the checkpoint). Every rank runs the same passes (collective layers such as SyncBatchNorm
    stay in step), then under ``torch.distributed`` the parameters are broadcast from rank 0, so all
    ranks hold rank 0's result. Each layer's output variance before and after goes to the loggers as
    ``lsuv/<layer>/variance_before`` and ``.../variance_after``.

    Args:
        num_samples: inputs drawn from the training dataloader (ignored when ``data`` is given).
        tol: accepted distance of each layer's output variance from 1.
        max_iters: rescaling rounds per layer.
        data: a tensor to use as the batch instead of the datamodule's data.

    Raises:
        ValueError: an argument out of range; at setup, no datamodule and no ``data``.

    Example:
        >>> callback = LSUVInit(num_samples=256)
    """

    def __init__(
        self, num_samples: int = 512, tol: float = 0.1, max_iters: int = 10, data: Tensor | None = None
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
            raise ValueError(f"LSUVInit: expected `num_samples` to be an int >= 2, but got {num_samples!r}.")
        if not isinstance(tol, (int, float)) or not 0 < tol < 1:
            raise ValueError(f"LSUVInit: expected `tol` to be a float in (0, 1), but got {tol!r}.")
        check_positive_int(max_iters, "max_iters", "LSUVInit")
        self.num_samples = num_samples
        self.tol = tol
        self.max_iters = max_iters
        self.data = data
        self.report: dict[str, tuple[float, float]] = {}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.data is None and getattr(trainer, "datamodule", None) is None:
            raise ValueError("LSUVInit needs a datamodule to draw a batch from, or a tensor as `data`.")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is not None:
            return
        batch = self.data if self.data is not None else self._draw_batch(trainer)
        self.report = lsuv_(pl_module, batch.to(pl_module.device), tol=self.tol, max_iters=self.max_iters)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for parameter in pl_module.parameters():
                torch.distributed.broadcast(parameter.data, src=0)
        lines = [f"  {name}: {before:.4g} -> {after:.4g}" for name, (before, after) in self.report.items()]
        rank_zero_info("LSUVInit: output variance per layer\n" + "\n".join(lines))
        self._log(trainer)

    def _draw_batch(self, trainer: pl.Trainer) -> Tensor:
        inputs: list[Tensor] = []
        for batch in trainer.datamodule.train_dataloader():  # type: ignore[attr-defined]
            inputs.append(inputs_of(batch))
            if sum(len(x) for x in inputs) >= self.num_samples:
                break
        return torch.cat(inputs)[: self.num_samples]

    def _log(self, trainer: pl.Trainer) -> None:
        metrics: dict[str, Any] = {}
        for name, (before, after) in self.report.items():
            metrics[f"lsuv/{name}/variance_before"] = before
            metrics[f"lsuv/{name}/variance_after"] = after
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
