"""scikit-learn's bundled 8x8 handwritten digits: 1,797 images, no download."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from ksparse_pl.data._sampler import EpochRandomSampler
from ksparse_pl.data._split import check_split_fractions


class DigitsDataModule(pl.LightningDataModule):
    """The UCI 8x8 digits bundled with scikit-learn, pixels scaled to [0, 1], as ``(x, label)`` batches.

    The train/val/test split is stratified by label and fixed by ``seed``, so every run and every
    process sees the same split; the training order of each epoch depends only on ``seed`` and the
    epoch, so a resumed run sees the batches the uninterrupted run saw.

    Args:
        batch_size: samples per batch.
        val_fraction: share of all samples held out for validation.
        test_fraction: share of all samples held out for testing (also what ``predict`` runs on).
        seed: the split's random seed.
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
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Expected `batch_size` to be an int >= 1, but got {batch_size!r}.")
        check_split_fractions(val_fraction, test_fraction)
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.flatten = flatten
        self.num_workers = num_workers

    @property
    def input_dim(self) -> int:
        return 64

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # (N, 64), pixel values 0..16
        if not self.flatten:
            x = x.view(-1, *self.image_shape)
        y = torch.tensor(digits.target, dtype=torch.long)
        index = torch.arange(len(y))
        held_out = self.val_fraction + self.test_fraction
        train_idx, rest_idx = train_test_split(index, test_size=held_out, stratify=y, random_state=self.seed)
        val_idx, test_idx = train_test_split(
            rest_idx, test_size=self.test_fraction / held_out, stratify=y[rest_idx], random_state=self.seed
        )
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])
        self.test_set = TensorDataset(x[test_idx], y[test_idx])

    def _loader(self, dataset: TensorDataset, sampler: EpochRandomSampler | None = None) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, EpochRandomSampler(self.train_set, seed=self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)
