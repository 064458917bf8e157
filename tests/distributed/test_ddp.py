"""Two CPU processes (gloo) against one process over the same global batches: identical statistics."""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from quiet_trainer import quiet_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ksparse_pl import KWinners, KWinners2d
from ksparse_pl.callbacks import DutyCycleBoosting, KSchedule, LSUVInit, SensitivitySchedule
from ksparse_pl.models import SparseAutoencoder

STEPS, GLOBAL_BATCH, WORLD = 5, 16, 2
STATE = ("duty_cycle", "sensitivity", "boost_strength", "samples_seen", "selection_count")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.sparse2d = KWinners2d(6, k=2, sensitivity=True, tau=3.0)
        self.fc = nn.Linear(6 * 4 * 4, 32)
        self.sparse = KWinners(32, k=5, sensitivity=True, tau=4.0, boost_strength=1.5)
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.sparse(self.fc(self.sparse2d(self.conv(x)).flatten(1))))


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(GLOBAL_BATCH, 1, 6, 6, generator=g), torch.randint(0, 3, (GLOBAL_BATCH,), generator=g))
        for _ in range(STEPS)
    ]


def train(model: nn.Module, batches, rank: int = 0, world: int = 1) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    share = GLOBAL_BATCH // world
    for x, y in batches:
        x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]  # rank order = global order
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model = Net()
    train(nn.parallel.DistributedDataParallel(model), global_batches(), rank, WORLD)
    torch.save(model.state_dict(), Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_equal_one_process_over_the_global_batch(tmp_path: Path) -> None:
    mp.spawn(ddp_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    torch.manual_seed(0)
    single = Net()
    train(single, global_batches())
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for layer in ("sparse", "sparse2d"):
        for name in STATE:
            key = f"{layer}.{name}"
            assert torch.equal(ranks[0][key], ranks[1][key]), key
            assert torch.equal(ranks[0][key], single.state_dict()[key]), key
    assert ranks[0]["sparse.samples_seen"].item() == STEPS * GLOBAL_BATCH
    assert (ranks[0]["sparse.sensitivity"] != 1).any()  # the comparison is not of untouched state
    for key, value in single.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(ranks[0][key], value, msg=key)
            torch.testing.assert_close(ranks[1][key], ranks[0][key], msg=key)


# --- through Lightning's ddp_spawn --------------------------------------------------------------------


class LitNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 24), KWinners(24, k=6, sensitivity=True, tau=5.0), nn.Linear(24, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(2)
    return TensorDataset(torch.randn(64, 10, generator=g), torch.randint(0, 3, (64,), generator=g), torch.arange(64))


class SaveRankState(pl.Callback):
    """Each rank writes its model state and its first-layer weights after LSUV, to compare ranks."""

    def __init__(self, out: str, desync_seed: bool = False) -> None:
        self.out = out
        self.desync_seed = desync_seed
        self.seen: list[list[int]] = []

    def setup(self, trainer, pl_module, stage):
        if self.desync_seed:  # without the broadcast, LSUV's orthonormal draws would differ between ranks
            torch.manual_seed(1000 + trainer.global_rank)

    def on_fit_start(self, trainer, pl_module):
        first_weight = next(pl_module.parameters())
        torch.save(first_weight.detach().clone(), Path(self.out) / f"lsuv{trainer.global_rank}.pt")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(batch[2].tolist())

    def on_fit_end(self, trainer, pl_module):
        torch.save(pl_module.state_dict(), Path(self.out) / f"fit{trainer.global_rank}.pt")
        torch.save(self.seen, Path(self.out) / f"seen{trainer.global_rank}.pt")


class ReplayOrder(torch.utils.data.Sampler):
    """The recorded sample order, one epoch's share per epoch."""

    def __init__(self, order: list[int]) -> None:
        self.order = order
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 64

    def __iter__(self):
        return iter(self.order[self.epoch * 64 : (self.epoch + 1) * 64])


def schedules():
    return [DutyCycleBoosting(), KSchedule(k_start=12, fraction=0.5), SensitivitySchedule(2.0, schedule="cosine")]


def replayed_global_order(out: Path) -> list[int]:
    """The samples of every step as the ranks saw them: rank 0's, then rank 1's (the global batch's order)."""
    seen = [torch.load(out / f"seen{r}.pt") for r in range(2)]
    return [i for step in range(len(seen[0])) for r in range(2) for i in seen[r][step]]


def lightning_trainer(callbacks, devices: int) -> pl.Trainer:
    strategy = "ddp_spawn" if devices > 1 else "auto"
    return quiet_trainer(None, callbacks, accelerator="cpu", devices=devices, strategy=strategy, max_epochs=2)


def test_lightning_ddp_spawn_matches_one_process(tmp_path: Path) -> None:
    """ddp_spawn on CPU: 2 ranks x 8 samples per step against 1 process x 16 over the same global batches."""
    data = dataset()
    pl.seed_everything(0)
    lightning_trainer([*schedules(), SaveRankState(str(tmp_path))], devices=2).fit(
        LitNet(), DataLoader(data, batch_size=8)
    )
    ranks = [torch.load(tmp_path / f"fit{r}.pt") for r in range(2)]
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]) if isinstance(value, torch.Tensor) else value == ranks[1][key], key

    # The global batch of a step is rank 0's samples, then rank 1's: replay exactly those in one process.
    pl.seed_everything(0)
    single = LitNet()
    replay = ReplayOrder(replayed_global_order(tmp_path))
    lightning_trainer(schedules(), devices=1).fit(single, DataLoader(data, batch_size=16, sampler=replay))
    for name in STATE:
        key = f"net.1.{name}"
        assert torch.equal(single.state_dict()[key], ranks[0][key]), key
    assert ranks[0]["net.1.samples_seen"].item() == 2 * 64
    for key, value in single.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(value, ranks[0][key], msg=key)


def test_lsuv_init_gives_every_rank_rank_zeros_weights(tmp_path: Path) -> None:
    data = dataset()
    callbacks = [LSUVInit(data=data.tensors[0]), SaveRankState(str(tmp_path), desync_seed=True)]
    trainer = lightning_trainer(callbacks, devices=2)
    trainer.fit_loop.max_epochs = 1
    trainer.fit(LitNet(), DataLoader(data, batch_size=8))
    lsuv = [torch.load(tmp_path / f"lsuv{r}.pt") for r in range(2)]
    assert torch.equal(lsuv[0], lsuv[1])


@pytest.mark.parametrize("sparse_path", [False, True], ids=["dense_path", "sparse_path"])
def test_autoencoder_auxk_counts_and_normalizes_over_the_global_batch(tmp_path: Path, sparse_path: bool) -> None:
    """AuxK: idle counts over both ranks' samples, and the residual's spread over the global batch, as one process
    over the global batch has them (units idle for a global batch are dead here, so AuxK trains them)."""
    data = dataset()

    def autoencoder() -> SparseAutoencoder:
        sgd = functools.partial(torch.optim.SGD, lr=0.05)
        return SparseAutoencoder(10, 32, k=2, sparse_path=sparse_path, optimizer=sgd, auxk=4, dead_after=16)

    pl.seed_everything(0)
    lightning_trainer([SaveRankState(str(tmp_path))], devices=2).fit(autoencoder(), DataLoader(data, batch_size=8))
    ranks = [torch.load(tmp_path / f"fit{r}.pt") for r in range(2)]
    pl.seed_everything(0)
    single = autoencoder()
    replay = ReplayOrder(replayed_global_order(tmp_path))
    lightning_trainer([], devices=1).fit(single, DataLoader(data, batch_size=16, sampler=replay))
    idle = single.idle_samples
    assert torch.equal(ranks[0]["idle_samples"], idle)
    assert torch.equal(ranks[1]["idle_samples"], idle)
    assert (idle == 0).any() and idle.max() > 16  # units that fired last step, and units idle for longer
    for key, value in single.state_dict().items():
        torch.testing.assert_close(ranks[0][key], value, msg=key)
