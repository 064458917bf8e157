"""A small LightningModule of a user's own (not one of ours) holding our layers, and its data."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from quiet_trainer import quiet_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ksparse_pl import KWinners


class UserAutoencoder(pl.LightningModule):
    def __init__(self, sensitivity: bool = True, boost_strength: float = 1.0, k: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(16, 32), KWinners(32, k, sensitivity=sensitivity, boost_strength=boost_strength)
        )
        self.head = nn.Linear(32, 16)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encoder(x))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = F.mse_loss(self(x), x)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class DenseNet(pl.LightningModule):
    """No sparse layer at all."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(16, 16)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.layer(z)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RandomData(pl.LightningDataModule):
    def __init__(self, n: int = 64, batch_size: int = 8) -> None:
        super().__init__()
        self.x = torch.randn(n, 16, generator=torch.Generator().manual_seed(0))
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x), batch_size=self.batch_size, shuffle=False)


def make_trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    return quiet_trainer(tmp_path, callbacks, **{"max_epochs": 4, **kwargs})
