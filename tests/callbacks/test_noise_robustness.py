import pytest
import pytorch_lightning as pl
import torch
from quiet_trainer import quiet_trainer

from ksparse_pl.callbacks import NoiseRobustness
from ksparse_pl.data import DigitsDataModule
from ksparse_pl.functional import add_pixel_noise
from ksparse_pl.models import SparseClassifier


@pytest.mark.parametrize("level", [0.0, 0.05, 0.1, 0.25, 0.5])
def test_exact_pixel_count_and_fill_value(level: float) -> None:
    images = torch.rand(16, 1, 28, 28) * 0.5
    fill = 0.1307 + 2 * 0.3081
    noisy = add_pixel_noise(images, level, fill, torch.Generator().manual_seed(0))
    changed = (noisy != images).flatten(1).sum(dim=1)
    assert changed.eq(int(784 * level)).all()
    assert noisy[noisy != images].eq(fill).all()
    assert ((fill - 0.1307) / 0.3081) == pytest.approx(2.0)


def test_same_seed_same_pixels_and_channels_together() -> None:
    images = torch.zeros(4, 3, 10, 10)
    a = add_pixel_noise(images, 0.3, 1.0, torch.Generator().manual_seed(5))
    b = add_pixel_noise(images, 0.3, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 0], a[:, 2])


def test_noise_robustness_on_a_trained_classifier(tmp_path) -> None:
    pl.seed_everything(0)
    dm = DigitsDataModule(flatten=False, batch_size=64)
    net = SparseClassifier(input_shape=(1, 8, 8), hidden=[64], optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    callback = NoiseRobustness(levels=[0.0, 0.25, 0.5])
    quiet_trainer(tmp_path, [callback], max_epochs=3).fit(net, dm)
    assert list(callback.results) == [0.0, 0.25, 0.5]
    clean = callback.results[0.0]
    net.eval()
    expected_clean = (net(dm.test_set.tensors[0]).argmax(1) == dm.test_set.tensors[1]).float().mean().item()
    assert clean == pytest.approx(expected_clean)
    assert callback.results[0.5] < clean
    assert callback.score == round(sum(callback.results.values()) * len(dm.test_set))
    assert "Noise score" in (tmp_path / "noise_robustness.md").read_text()


def test_needs_a_fill_value_for_modules_without_normalization(tmp_path) -> None:
    class Plain(pl.LightningModule):
        def training_step(self, batch, i):
            return None

    with pytest.raises(ValueError, match="no `mean` and `std`.*pass `fill_value`"):
        NoiseRobustness().setup(pl.Trainer(logger=False), Plain(), "fit")


def test_bad_levels() -> None:
    with pytest.raises(ValueError, match=r"NoiseRobustness: expected `levels` in \[0, 1\]"):
        NoiseRobustness(levels=[0.1, 1.5])
