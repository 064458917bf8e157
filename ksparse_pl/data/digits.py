"""scikit-learn's bundled 8x8 handwritten digits: 1,797 images, no download."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import Tensor

from ksparse_pl.data._tensor_module import TensorDataModule


class DigitsDataModule(TensorDataModule):
    """The UCI 8x8 digits bundled with scikit-learn, pixels scaled to [0, 1], as ``(x, label)`` batches.

    The train/val/test split is stratified by label and fixed by ``seed``, so every run and every
    process sees the same split; the training order of each epoch depends only on ``seed`` and the
    epoch, so a resumed run sees the batches the uninterrupted run saw.

    Args:
        batch_size: samples per batch.
        val_fraction: share of all samples held out for validation.
        test_fraction: share of all samples held out for testing (also what ``predict`` runs on).
        seed: the split's and the shuffling's random seed.
        flatten: give ``x`` as 64-vectors (autoencoders, MLPs) instead of ``(1, 8, 8)`` images (CNNs).
        num_workers: DataLoader worker processes.

    Example:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> x.shape, y.shape, len(dm.train_set), len(dm.val_set)
        (torch.Size([32, 64]), torch.Size([32]), 1257, 270)
    """

    num_classes = 10
    image_shape = (1, 8, 8)

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        flatten: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        self.save_hyperparameters()
        self.flatten = flatten

    def load(self) -> tuple[Tensor, Tensor]:
        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # (N, 64), pixel values 0..16
        return (x if self.flatten else x.view(-1, *self.image_shape)), torch.tensor(digits.target, dtype=torch.long)
