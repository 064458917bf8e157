"""A datamodule over in-memory ``(x, y)`` tensors with a fixed, stratified train/val/test split."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from ksparse_pl.data._sampler import EpochRandomSampler
from ksparse_pl.data._split import check_split_fractions
from ksparse_pl.functional._checks import check_positive_int


class TensorDataModule(pl.LightningDataModule):
    """Base of the datamodules whose data fit in memory: subclasses implement :meth:`load`.

    The split is stratified by label when there are labels, and fixed by ``seed``; the training order
    of each epoch depends only on ``seed`` and the epoch, so a resumed run replays the same batches.
    Batches are ``(x, y)``, or ``(x,)`` without labels; ``predict`` runs on the test split.
    """

    def __init__(
        self, batch_size: int, val_fraction: float, test_fraction: float | None, seed: int, num_workers: int
    ) -> None:
        """``test_fraction=None``: the subclass brings its own test split (and overrides :meth:`setup`)."""
        super().__init__()
        check_positive_int(batch_size, "batch_size")
        check_split_fractions(val_fraction, 0.0 if test_fraction is None else test_fraction)
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.num_workers = num_workers

    def load(self) -> tuple[Tensor, Tensor | None]:
        """All samples ``x`` (float) and labels ``y`` (long) or ``None``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        x, y = self.load()
        assert self.test_fraction is not None, "subclasses with their own test split override setup"
        n_val, n_test = round(self.val_fraction * len(x)), round(self.test_fraction * len(x))
        train_idx, rest_idx = train_test_split(
            torch.arange(len(x)), test_size=n_val + n_test, stratify=y, random_state=self.seed
        )
        val_idx, test_idx = train_test_split(
            rest_idx, test_size=n_test, stratify=None if y is None else y[rest_idx], random_state=self.seed
        )
        self.train_set, self.val_set, self.test_set = (
            TensorDataset(x[i]) if y is None else TensorDataset(x[i], y[i]) for i in (train_idx, val_idx, test_idx)
        )

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
