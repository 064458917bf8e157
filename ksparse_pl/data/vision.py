"""torchvision's MNIST, FashionMNIST and CIFAR10, downloaded on request, as [0, 1] image tensors."""

from __future__ import annotations

from typing import Literal

import torch
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import TensorDataset

from ksparse_pl.data._tensor_module import TensorDataModule

_DATASETS = ("MNIST", "FashionMNIST", "CIFAR10")


class VisionDataModule(TensorDataModule):
    """A torchvision dataset: the official training set split into train/val, the official test set as test.

    Images are ``(C, H, W)`` in [0, 1] (models normalize them inside). The data is read from ``root``;
    with ``download=True`` torchvision fetches it there first (the only part of ksparse_pl that touches
    the network, and only when asked).

    Args:
        dataset: ``"MNIST"``, ``"FashionMNIST"`` or ``"CIFAR10"``.
        root: where the data lives (or is downloaded to).
        download: let torchvision download the data if it is missing.
        val_fraction: share of the official training set held out for validation.
        flatten: give every image as a vector (for MLPs and autoencoders).
        batch_size, seed, num_workers: as :class:`DigitsDataModule`.

    Raises:
        ValueError: an unknown ``dataset``.
        RuntimeError: the data is not under ``root`` and ``download`` is false (torchvision's message).
    """

    def __init__(
        self,
        dataset: Literal["MNIST", "FashionMNIST", "CIFAR10"] = "MNIST",
        root: str = "data",
        download: bool = False,
        val_fraction: float = 0.1,
        flatten: bool = False,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        if dataset not in _DATASETS:
            raise ValueError(f"Expected `dataset` to be one of {_DATASETS}, but got {dataset!r}.")
        super().__init__(batch_size, val_fraction, None, seed, num_workers)
        self.save_hyperparameters()
        self.dataset, self.root, self.download, self.flatten = dataset, root, download, flatten

    def _read(self, train: bool) -> tuple[Tensor, Tensor]:
        import torchvision

        data = getattr(torchvision.datasets, self.dataset)(self.root, train=train, download=self.download)
        x = torch.as_tensor(data.data).float() / 255.0
        x = x.permute(0, 3, 1, 2) if x.dim() == 4 else x.unsqueeze(1)  # (N, H, W[, C]) -> (N, C, H, W)
        x = x.reshape(len(x), -1) if self.flatten else x
        return x.contiguous(), torch.as_tensor(data.targets).long()

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        x, y = self._read(train=True)
        train_idx, val_idx = train_test_split(
            torch.arange(len(x)), test_size=self.val_fraction, stratify=y, random_state=self.seed
        )
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])
        self.test_set = TensorDataset(*self._read(train=False))
