import pytest
import pytorch_lightning as pl
import torch
from quiet_trainer import quiet_trainer

from ksparse_pl.data import DigitsDataModule
from ksparse_pl.models import SparseAutoencoder


def test_forward_encode_decode_shapes() -> None:
    model = SparseAutoencoder(64, 100, k=7)
    x = torch.rand(3, 1, 8, 8)
    assert model(x).shape == x.shape
    code = model.encode(x)
    assert code.shape == (3, 100) and (code != 0).sum(dim=1).eq(7).all()
    assert model.decode(code).shape == (3, 64)


def test_eval_uses_k_inference_factor() -> None:
    model = SparseAutoencoder(64, 100, k=10, k_inference_factor=2.0).eval()
    assert (model.encode(torch.rand(4, 64)) != 0).sum(dim=1).eq(20).all()


def test_tied_weights_share_the_encoder_weight() -> None:
    model = SparseAutoencoder(16, 32, k=4, tied_weights=True)
    assert model.decoder is None
    model(torch.rand(2, 16)).sum().backward()
    assert model.encoder.weight.grad is not None
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 16 * 32 + 32 + 16


def test_untied_decoder_starts_as_encoder_transpose() -> None:
    model = SparseAutoencoder(16, 32, k=4)
    assert torch.equal(model.decoder.weight, model.encoder.weight.t())


def test_wrong_input_size() -> None:
    with pytest.raises(ValueError, match=r"64 values per sample \(`input_dim`\).*\(2, 63\)"):
        SparseAutoencoder(64, 32, k=4)(torch.rand(2, 63))


def test_k_out_of_range_names_k_and_width() -> None:
    with pytest.raises(ValueError, match=r"`k` to be an int in \[1, 32\].*40"):
        SparseAutoencoder(64, 32, k=40)


def test_training_reduces_error_and_checkpoint_round_trips(tmp_path) -> None:
    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=64)
    model = SparseAutoencoder(64, 128, k=12, boost_strength=0.5, sensitivity=True)
    trainer = quiet_trainer(tmp_path, max_epochs=3)
    first = trainer.validate(model, dm, verbose=False)[0]["val/fvu"]
    trainer.fit(model, dm)
    last = trainer.validate(model, dm, verbose=False)[0]["val/fvu"]
    assert last < 0.6 * first
    assert model.sparse.samples_seen.item() == 3 * len(dm.train_set)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = SparseAutoencoder.load_from_checkpoint(path)
    x = torch.rand(5, 64)
    model.eval()
    restored.eval()
    torch.testing.assert_close(restored(x), model(x))
    torch.testing.assert_close(restored.sparse.duty_cycle, model.sparse.duty_cycle)
