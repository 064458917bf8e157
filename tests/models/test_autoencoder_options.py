import pytest
import pytorch_lightning as pl
import torch
from quiet_trainer import quiet_trainer
from torch import nn

from ksparse_pl import KSparse, KWinners
from ksparse_pl.data import DigitsDataModule
from ksparse_pl.models import SparseAutoencoder


@pytest.mark.parametrize(("activation", "kind"), [("relu", nn.ReLU), ("linear", nn.Identity), ("kwinners", KWinners)])
def test_code_activations(activation: str, kind: type) -> None:
    model = SparseAutoencoder(16, 32, k=4 if activation == "kwinners" else None, activation=activation)
    assert isinstance(model.sparse, kind)
    assert model(torch.rand(3, 16)).shape == (3, 16)


def test_mlp_encoder() -> None:
    model = SparseAutoencoder(16, 32, k=4, encoder_hidden=[24, 20])
    assert [m.out_features for m in model.trunk if isinstance(m, nn.Linear)] == [24, 20]
    assert isinstance(model.sparse, KSparse) and model.encode(torch.rand(2, 16)).shape == (2, 32)


def test_penalty_enters_the_loss() -> None:
    x = torch.rand(8, 16)
    losses = []
    for weight in (0.0, 10.0):
        torch.manual_seed(0)
        model = SparseAutoencoder(16, 32, activation="relu", penalty="mean_activation", penalty_weight=weight)
        model.log = lambda *a, **k: None
        losses.append(model.training_step(x, 0).item())
    torch.manual_seed(0)
    model = SparseAutoencoder(16, 32, activation="relu")
    code = model.sparse(model.preactivation(x))
    expected_penalty = code.mean(0).square().sum().item()
    assert losses[1] - losses[0] == pytest.approx(10.0 * expected_penalty, rel=1e-4)


@pytest.mark.parametrize("sparse_path", [False, True])
def test_auxk_trains_dead_units_only(sparse_path: bool) -> None:
    model = SparseAutoencoder(16, 32, k=2, auxk=4, dead_after=1, sparse_path=sparse_path)
    model.log = lambda *a, **k: None
    x = torch.rand(8, 16)
    with torch.no_grad():
        code = model.encode(x)
    dead = ~(code != 0).any(0)
    model.idle_samples.fill_(5)
    model.idle_samples[~dead] = 0
    # linear encoder: features = x
    loss = model._auxk_loss(x - model.decode(code), model.preactivation(x), x, model.trains_sparse(x.device))
    assert loss.item() > 0
    loss.backward()
    grad_rows = model.encoder.weight.grad.abs().sum(dim=1)
    assert (grad_rows[~dead] == 0).all() and (grad_rows[dead] > 0).any()


def quick_trainer(root, epochs: int) -> pl.Trainer:
    return quiet_trainer(root, max_epochs=epochs)


def test_idle_counter_and_dead_fraction(tmp_path) -> None:
    pl.seed_everything(0)
    model = SparseAutoencoder(64, 200, k=2)
    trainer = quick_trainer(tmp_path, 1)
    trainer.fit(model, DigitsDataModule())
    metrics = trainer.validate(model, DigitsDataModule(), verbose=False)[0]
    assert 0 <= metrics["val/dead_fraction"] < 1
    assert model.idle_samples.max() > 0


def test_linear_probe_at_fit_end(tmp_path) -> None:
    pl.seed_everything(0)
    model = SparseAutoencoder(64, 128, k=16, linear_probe=True)
    trainer = quick_trainer(tmp_path, 2)
    trainer.fit(model, DigitsDataModule())
    assert model.probe_accuracy is not None and model.probe_accuracy > 0.8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"activation": "ksparse"}, "needs `k`"),
        ({"activation": "gelu", "k": 2}, "`activation` to be one of.*'gelu'"),
        ({"k": 2, "penalty": "l2"}, "`penalty` to be one of.*'l2'"),
        ({"k": 2, "auxk": 40}, r"`auxk` in \[0, 32\]"),
        ({"k": 2, "tied_weights": True, "encoder_hidden": [8]}, "`tied_weights` needs a linear encoder"),
        ({"k": 2, "dropout": 1.0}, r"`dropout` in \[0, 1\)"),
    ],
)
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SparseAutoencoder(16, 32, **kwargs)
