"""An MLP or CNN classifier whose layers may be k-sparse (Numenta's "How Can We Be So Dense?")."""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ksparse_pl.init import sparse_aware_init_
from ksparse_pl.layers import SparseWeights
from ksparse_pl.models._activations import Activation, check_activation, dense_activation, map_activation


def _sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01)


def _per_layer(values: list[int] | None, count: int, name: str) -> list[int | None]:
    if values is None:
        return [None] * count
    if len(values) != count:
        raise ValueError(f"Expected `{name}` to have one entry per layer ({count}), but got {values!r}.")
    return list(values)


class SparseClassifier(pl.LightningModule):
    """Conv blocks (conv -> max-pool 2 -> activation), then hidden linear layers, then a linear read-out.

    ``forward`` takes images with values in [0, 1] and normalizes them inside (``(x - mean) / std``),
    so noise can be applied to raw images; it returns logits. Each activation is ``relu``, ``ksparse`` or
    ``kwinners``: for conv blocks a top-k of all C*H*W values of the pooled map (Numenta's CNNs), for
    hidden layers a top-k of the units. Hidden (and optionally conv) weights can be sparse.

    Numenta's Sparse CNN-2 on MNIST: ``conv_channels=[32, 64]``, ``conv_k=[400, 300]``,
    ``hidden=[700]``, ``hidden_k=[100]``, activations ``kwinners``, ``weight_sparsity=0.7``.

    Args:
        input_shape: ``(C, H, W)`` of the images.
        num_classes: number of classes.
        conv_channels: output channels of each conv block; empty for an MLP.
        conv_kernel: conv kernel size (no padding).
        conv_activation: activation after each conv block's pooling.
        conv_k: winners per conv block (of C*H*W); default ``conv_percent_on``.
        conv_percent_on: share of winners per conv block when ``conv_k`` is not given.
        hidden: widths of the hidden linear layers.
        hidden_activation: activation of the hidden layers.
        hidden_k: winners per hidden layer; default ``hidden_percent_on``.
        hidden_percent_on: share of winners per hidden layer when ``hidden_k`` is not given.
        weight_sparsity: share of zero weights in each hidden layer (Numenta: 0.7, i.e. 30% non-zero).
        conv_weight_sparsity: share of zero weights in each conv layer.
        dropout: dropout before each hidden layer and the read-out.
        batch_norm: batch norm after each conv and hidden layer (before the activation).
        boost_strength: k-winners' boost strength.
        boost_strength_factor: k-winners' boost decay per epoch (applied by ``DutyCycleBoosting``).
        k_inference_factor: k-winners' inference k factor.
        duty_cycle_period: k-winners' duty-cycle period.
        mean: normalization mean of the [0, 1] pixels.
        std: normalization standard deviation.
        init: ``torch``'s default initialization, or ``he`` / ``glorot`` with the effective fan-in (after a
            layer keeping k of M units, fan-in k; sparse weights count their non-zeros; see
            :func:`ksparse_pl.init.sparse_aware_init_`). On the MNIST subset ``he`` took the sparse MLP from
            75% to 90%+ test accuracy; on an 8x8-digits CNN it trained slower than ``torch``.
        optimizer: the optimizer (default SGD, lr 0.01).
        lr_scheduler: an optional scheduler, stepped every epoch (Numenta: StepLR, gamma 0.8).

    Example:
        >>> import torch
        >>> net = SparseClassifier(conv_channels=[8], conv_activation="kwinners", conv_k=[50],
        ...                        hidden=[64], hidden_activation="kwinners", hidden_k=[8])
        >>> net(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        conv_channels: list[int] | None = None,
        conv_kernel: int = 5,
        conv_activation: Activation = "relu",
        conv_k: list[int] | None = None,
        conv_percent_on: float = 0.1,
        hidden: list[int] | None = None,
        hidden_activation: Activation = "relu",
        hidden_k: list[int] | None = None,
        hidden_percent_on: float = 0.1,
        weight_sparsity: float = 0.0,
        conv_weight_sparsity: float = 0.0,
        dropout: float = 0.0,
        batch_norm: bool = False,
        boost_strength: float = 1.5,
        boost_strength_factor: float = 0.85,
        k_inference_factor: float = 1.5,
        duty_cycle_period: int = 1000,
        mean: float = 0.1307,
        std: float = 0.3081,
        init: Literal["torch", "he", "glorot"] = "torch",
        optimizer: OptimizerCallable = _sgd,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise ValueError(f"Expected `input_shape` to be (C, H, W) of positive ints, but got {input_shape!r}.")
        if not (std > 0):
            raise ValueError(f"Expected `std` > 0, but got {std!r}.")
        self.input_shape = tuple(input_shape)
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)
        sparse_options = {
            "boost_strength": boost_strength,
            "boost_strength_factor": boost_strength_factor,
            "k_inference_factor": k_inference_factor,
            "duty_cycle_period": duty_cycle_period,
        }
        check_activation(conv_activation, "conv_activation")
        check_activation(hidden_activation, "hidden_activation")
        self.features, features = self._conv_blocks(conv_channels or [], conv_kernel, conv_k, sparse_options)
        self.hidden_layers = self._hidden_layers(hidden or [], features, hidden_k, sparse_options)
        last = (hidden or [features])[-1]
        self.readout = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        if init not in ("torch", "he", "glorot"):
            raise ValueError(f"Expected `init` to be one of ('torch', 'he', 'glorot'), but got {init!r}.")
        if init != "torch":
            sparse_aware_init_(self, init)
        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")

    def _conv_blocks(
        self, channels: list[int], kernel: int, ks: list[int] | None, options: dict[str, float]
    ) -> tuple[nn.Sequential, int]:
        hp: Any = self.hparams  # the __init__ arguments, saved by save_hyperparameters
        blocks: list[nn.Module] = []
        c, h, w = self.input_shape
        for index, (out, k) in enumerate(zip(channels, _per_layer(ks, len(channels), "conv_k"), strict=True)):
            h, w = (h - kernel + 1) // 2, (w - kernel + 1) // 2
            if h < 1 or w < 1:
                raise ValueError(
                    f"conv block {index} (kernel {kernel}, max-pool 2) leaves no pixels of the {self.input_shape} "
                    "input; use fewer conv blocks or a smaller `conv_kernel`."
                )
            conv: nn.Module = nn.Conv2d(c, out, kernel)
            if hp.conv_weight_sparsity > 0:
                conv = SparseWeights(conv, hp.conv_weight_sparsity)
            blocks += [conv, nn.MaxPool2d(2)]
            if hp.batch_norm:
                blocks.append(nn.BatchNorm2d(out, affine=False))
            blocks.append(map_activation(hp.conv_activation, (out, h, w), k, hp.conv_percent_on, **options))
            c = out
        blocks.append(nn.Flatten())
        return nn.Sequential(*blocks), c * h * w

    def _hidden_layers(
        self, widths: list[int], features: int, ks: list[int] | None, options: dict[str, float]
    ) -> nn.Sequential:
        hp: Any = self.hparams  # the __init__ arguments, saved by save_hyperparameters
        layers: list[nn.Module] = []
        for width, k in zip(widths, _per_layer(ks, len(widths), "hidden_k"), strict=True):
            linear: nn.Module = nn.Linear(features, width)
            if hp.weight_sparsity > 0:
                linear = SparseWeights(linear, hp.weight_sparsity)
            layers += [nn.Dropout(hp.dropout), linear]
            if hp.batch_norm:
                layers.append(nn.BatchNorm1d(width, affine=False))
            layers.append(dense_activation(hp.hidden_activation, width, k, hp.hidden_percent_on, **options))
            features = width
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for images ``(B, C, H, W)`` with values in [0, 1]."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"SparseClassifier expects images of shape (B, {', '.join(map(str, self.input_shape))}) "
                f"(`input_shape`), but got {tuple(x.shape)}."
            )
        x = (x - self.mean) / self.std
        return self.readout(self.hidden_layers(self.features(x)))

    def _step(self, batch: Any, stage: str, accuracy: MulticlassAccuracy) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        accuracy.update(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test")
        self.log(f"{stage}/accuracy", accuracy, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_accuracy)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", self.val_accuracy)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test", self.test_accuracy)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Predicted classes."""
        return self(batch[0] if isinstance(batch, (tuple, list)) else batch).argmax(dim=1)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
