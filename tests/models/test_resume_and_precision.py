"""Interrupted-and-resumed training equals uninterrupted training; mixed precision keeps the state exact."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from quiet_trainer import StopAfter, quiet_trainer

from ksparse_pl.callbacks import DutyCycleBoosting, KSchedule, NodeUsageLogger, SensitivitySchedule
from ksparse_pl.data import DigitsDataModule
from ksparse_pl.models import SparseAutoencoder

EPOCHS = 4


def callbacks() -> list[pl.Callback]:
    return [
        DutyCycleBoosting(boost_strength_factor=0.8),
        KSchedule(k_start=40, fraction=0.75),
        SensitivitySchedule(2.0, schedule="cosine", tau_final=50.0),
        NodeUsageLogger(every_n_steps=7),
    ]


def model() -> SparseAutoencoder:
    return SparseAutoencoder(64, 96, k=8, boost_strength=1.0, sensitivity=True, tau=20.0)


def trainer(root: Path, extra: list[pl.Callback] = (), **kwargs) -> pl.Trainer:
    return quiet_trainer(root, [*callbacks(), *extra], **{"max_epochs": EPOCHS, "deterministic": True, **kwargs})


def test_resume_is_bitwise_the_uninterrupted_run(tmp_path: Path) -> None:
    pl.seed_everything(0)
    straight = model()
    straight_trainer = trainer(tmp_path / "a")
    straight_trainer.fit(straight, DigitsDataModule(batch_size=128))

    pl.seed_everything(0)
    interrupted = trainer(tmp_path / "b", [StopAfter(2)])
    interrupted.fit(model(), DigitsDataModule(batch_size=128))
    path = tmp_path / "b" / "interrupted.ckpt"
    interrupted.save_checkpoint(path)

    pl.seed_everything(123)  # the resumed process starts from a different random state
    resumed = model()
    resumed_trainer = trainer(tmp_path / "b")
    resumed_trainer.fit(resumed, DigitsDataModule(batch_size=128), ckpt_path=path)

    expected, actual = straight.state_dict(), resumed.state_dict()
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(actual[key], value), key
        else:
            assert actual[key] == value, key
    layer = resumed.sparse
    assert (layer.k, layer.s_max, layer.tau) == (straight.sparse.k, straight.sparse.s_max, straight.sparse.tau)
    steps = EPOCHS * 10  # 1257 training digits in batches of 128
    assert layer.k == 8 and layer.s_max == pytest.approx(2.0 + 8.0 * (1 + math.cos(math.pi * (steps - 1) / steps)) / 2)
    assert float(layer.boost_strength) == pytest.approx(0.8**EPOCHS)
    for ours, theirs in zip(resumed_trainer.callbacks, straight_trainer.callbacks, strict=True):
        if hasattr(ours, "state_dict"):
            assert str(ours.state_dict()) == str(theirs.state_dict()), type(ours).__name__
    optimizer_state = resumed_trainer.optimizers[0].state_dict()["state"]
    for index, state in straight_trainer.optimizers[0].state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(optimizer_state[index][name], value), (index, name)


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_on_cpu_trains_without_nans_and_keeps_float32_state(tmp_path: Path, precision: str) -> None:
    pl.seed_everything(0)
    ae = model()
    dm = DigitsDataModule(batch_size=64)
    trainer(tmp_path, precision=precision, max_epochs=2).fit(ae, dm)
    for name in ("duty_cycle", "sensitivity", "boost_strength"):
        assert getattr(ae.sparse, name).dtype == torch.float32, name
    assert ae.sparse.samples_seen.item() == 2 * 1257
    assert torch.isfinite(ae.sparse.sensitivity).all() and torch.isfinite(ae.sparse.duty_cycle).all()
    assert all(torch.isfinite(p).all() for p in ae.parameters())
    ae.eval()
    dm.setup("fit")
    x = dm.val_set.tensors[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fvu = ((ae(x.to(next(ae.parameters()).dtype)).float() - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fvu < 1.0
