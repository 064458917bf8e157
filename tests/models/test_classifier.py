from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from quiet_trainer import quiet_trainer

from ksparse_pl import KWinners, KWinners2d, SparseWeights
from ksparse_pl.data import DigitsDataModule
from ksparse_pl.models import SparseClassifier


def numenta_sparse_cnn2() -> SparseClassifier:
    return SparseClassifier(
        conv_channels=[32, 64],
        conv_activation="kwinners",
        conv_k=[400, 300],
        hidden=[700],
        hidden_activation="kwinners",
        hidden_k=[100],
        weight_sparsity=0.7,
    )


def test_numenta_sparse_cnn2_shapes() -> None:
    net = numenta_sparse_cnn2()
    winners = [m for m in net.modules() if isinstance(m, (KWinners, KWinners2d))]
    assert [(m.width, m.k) for m in winners] == [(4608, 400), (1024, 300), (700, 100)]
    hidden = [m for m in net.modules() if isinstance(m, SparseWeights)]
    assert len(hidden) == 1 and (hidden[0].module.weight != 0).sum(dim=1).eq(round(0.3 * 1024)).all()
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_normalization_happens_inside() -> None:
    net = SparseClassifier(hidden=[16], mean=0.5, std=0.25)
    seen = []
    net.hidden_layers.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    net(torch.full((1, 1, 28, 28), 0.75))
    assert torch.allclose(seen[0], torch.ones_like(seen[0]))


def test_dense_mlp_and_dropout_batch_norm() -> None:
    net = SparseClassifier(input_shape=(1, 8, 8), hidden=[32, 16], dropout=0.5, batch_norm=True)
    assert net(torch.rand(4, 1, 8, 8)).shape == (4, 10)
    assert not any(isinstance(m, KWinners) for m in net.modules())


def test_trains_and_round_trips_through_checkpoint(tmp_path: Path) -> None:
    pl.seed_everything(0)
    dm = DigitsDataModule(flatten=False, batch_size=64)
    net = SparseClassifier(
        input_shape=(1, 8, 8),
        conv_channels=[16],
        conv_kernel=3,
        conv_activation="kwinners",
        conv_k=[20],
        hidden=[64],
        hidden_activation="kwinners",
        hidden_k=[10],
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
    )
    trainer = quiet_trainer(tmp_path, max_epochs=4)
    trainer.fit(net, dm)
    accuracy = trainer.validate(net, dm, verbose=False)[0]["val/accuracy"]
    assert accuracy > 0.8
    path = tmp_path / "net.ckpt"
    trainer.save_checkpoint(path)
    restored = SparseClassifier.load_from_checkpoint(path).eval()
    net.eval()
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(restored(x), net(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden_activation": "gelu"}, r"`hidden_activation` to be one of \('relu', 'ksparse', 'kwinners'\).*'gelu'"),
        ({"conv_channels": [8], "conv_k": [1, 2]}, r"`conv_k` to have one entry per layer \(1\)"),
        ({"conv_channels": [8, 8, 8]}, "conv block 2 .* leaves no pixels"),
        ({"input_shape": (28, 28)}, r"`input_shape` to be \(C, H, W\)"),
        ({"hidden": [10], "hidden_activation": "kwinners", "hidden_k": [11]}, r"`k` to be an int in \[1, 10\]"),
    ],
)
def test_bad_configuration_fails_before_training(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SparseClassifier(**kwargs)


def test_wrong_image_shape() -> None:
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\) \(`input_shape`\).*\(2, 1, 8, 8\)"):
        SparseClassifier(hidden=[8])(torch.rand(2, 1, 8, 8))


def test_he_init_uses_the_effective_fan_in() -> None:
    net = SparseClassifier(
        hidden=[2000, 500], hidden_activation="kwinners", hidden_k=[20, 50], weight_sparsity=0.7, init="he"
    )
    first, second = (m for m in net.modules() if isinstance(m, SparseWeights))
    kept = second.module.weight[second.mask == 1]
    # after k-winners keeping 20 of 2000 units and 30% non-zero weights, the effective fan-in is 0.3 * 20
    assert kept.std().item() == pytest.approx((2 / (0.3 * 20)) ** 0.5, rel=0.05)
    assert first.module.weight[first.mask == 1].std().item() == pytest.approx((2 / (0.3 * 784)) ** 0.5, rel=0.05)
    torch_default = SparseClassifier(hidden=[2000, 500], hidden_k=[20, 50])
    assert torch_default.hidden_layers[1].weight.std().item() < 0.05


def test_bad_init() -> None:
    with pytest.raises(ValueError, match=r"`init` to be one of \('torch', 'he', 'glorot'\).*'lecun'"):
        SparseClassifier(hidden=[8], init="lecun")  # type: ignore[arg-type]
