"""SparseAutoencoder's sparse training path against its dense path: same losses, parameters and layer state."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from quiet_trainer import quiet_trainer
from same_state import assert_same_state

from ksparse_pl.data import ArrayDataModule
from ksparse_pl.models import SparseAutoencoder
from ksparse_pl.models.autoencoder import SPARSE_PATH_MIN_WEIGHTS, SPARSE_PATH_MIN_WEIGHTS_GPU

CASES = {
    "ksparse": {"k": 4},
    "relu after top-k": {"k": 4, "relu": True},
    "tied weights": {"k": 4, "tied_weights": True},
    "by magnitude": {"k": 4, "by_magnitude": True},
    "kwinners, boosting and sensitivity": {"k": 4, "activation": "kwinners", "sensitivity": True, "s_max": 5.0},
    "MLP encoder": {"k": 4, "encoder_hidden": [24]},
    "AuxK": {"k": 4, "auxk": 30, "dead_after": 1},  # many aux units, so some pre-activations are negative
}


def twins(options: dict) -> tuple[SparseAutoencoder, SparseAutoencoder]:
    torch.manual_seed(0)
    dense = SparseAutoencoder(16, 40, sparse_path=False, **options)
    sparse = SparseAutoencoder(16, 40, sparse_path=True, **options)
    sparse.load_state_dict(dense.state_dict())
    for model in (dense, sparse):
        model.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    return dense, sparse


def train(model: SparseAutoencoder, batches: list[torch.Tensor]) -> list[float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for index, batch in enumerate(batches):
        loss = model.training_step(batch, index)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("case", list(CASES))
def test_sparse_path_trains_like_the_dense_path(case: str) -> None:
    dense, sparse = twins(CASES[case])
    torch.manual_seed(1)
    batches = [torch.randn(8, 16) for _ in range(4)]
    assert train(sparse, batches) == pytest.approx(train(dense, batches), rel=1e-5, abs=1e-6)
    assert_same_state(dense, sparse, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["ksparse", "AuxK"])
def test_dense_path_through_the_sparse_paths_decoder_layout_trains_alike(case: str) -> None:
    """What a default model below the GPU's threshold does on a GPU (decoder laid out for the sparse path, dense
    steps), here on the CPU by turning the sparse path off after the layout is chosen."""
    dense, transposed = twins(CASES[case])
    transposed.sparse_path = False
    assert transposed.decoder is not None and transposed.decoder.weight.t().is_contiguous()
    torch.manual_seed(1)
    batches = [torch.randn(8, 16) for _ in range(4)]
    assert train(transposed, batches) == pytest.approx(train(dense, batches), rel=1e-5, abs=1e-6)
    assert_same_state(dense, transposed, rtol=1e-4, atol=1e-5)


def test_auxk_case_really_has_dead_units() -> None:
    _, sparse = twins(CASES["AuxK"])
    train(sparse, [torch.randn(8, 16) for _ in range(3)])
    assert (sparse.idle_samples >= 1).any()


def test_untied_decoder_rows_are_contiguous_and_checkpoints_cross_paths() -> None:
    dense, sparse = twins(CASES["ksparse"])
    assert sparse.decoder is not None and sparse.decoder.weight.t().is_contiguous()
    assert sparse.decoder.weight.shape == dense.decoder.weight.shape  # type: ignore[union-attr]
    x = torch.rand(3, 16)
    reloaded = SparseAutoencoder(16, 40, k=4, sparse_path=False)
    reloaded.load_state_dict(sparse.state_dict())
    torch.testing.assert_close(reloaded(x), sparse(x))


def test_fit_with_the_sparse_path_matches_the_dense_path(tmp_path) -> None:
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(0).random((64, 16), dtype=np.float32))
    final = []
    for sparse_path in (False, True):
        pl.seed_everything(0)
        model = SparseAutoencoder(16, 40, k=4, activation="kwinners", sensitivity=True, sparse_path=sparse_path)
        trainer = quiet_trainer(tmp_path, max_epochs=2)
        data = ArrayDataModule(str(tmp_path / "data.npz"), y_key=None, scale=1.0, batch_size=16, test_fraction=0.25)
        trainer.fit(model, data)
        final.append(model.state_dict())
    for name, expected in final[0].items():
        if isinstance(expected, dict):  # a layer's extra state
            assert final[1][name] == expected, name
        else:
            torch.testing.assert_close(final[1][name].float(), expected.float(), rtol=1e-4, atol=1e-5, msg=name)


def test_default_turns_on_for_large_top_k_code_layers_only() -> None:
    width = SPARSE_PATH_MIN_WEIGHTS // 64
    assert SparseAutoencoder(64, width, k=4).sparse_path
    assert not SparseAutoencoder(64, width - 1, k=4).sparse_path
    assert SparseAutoencoder(8, width, k=4, encoder_hidden=[64]).sparse_path  # the code layer's fan-in counts
    assert not SparseAutoencoder(64, width, k=4, dropout=0.1).sparse_path
    assert not SparseAutoencoder(64, width, activation="relu").sparse_path


def test_default_on_a_gpu_turns_on_from_its_own_threshold() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")  # a device to decide for; nothing runs on it
    mid = SparseAutoencoder(64, SPARSE_PATH_MIN_WEIGHTS // 64, k=4)
    assert mid.sparse_path and mid.trains_sparse(cpu) and not mid.trains_sparse(gpu)
    assert SparseAutoencoder(64, SPARSE_PATH_MIN_WEIGHTS // 64, k=4, sparse_path=True).trains_sparse(gpu)
    assert not SparseAutoencoder(64, 4096, k=4, sparse_path=False).trains_sparse(cpu)
    with torch.device("meta"):  # the GPU's threshold is 2**25 weights: built without memory
        width = SPARSE_PATH_MIN_WEIGHTS_GPU // 1024
        assert SparseAutoencoder(1024, width, k=4).trains_sparse(gpu)
        assert not SparseAutoencoder(1024, width - 1, k=4).trains_sparse(gpu)
        assert not SparseAutoencoder(1024, width, k=4, dropout=0.1).trains_sparse(gpu)


@pytest.mark.parametrize(
    ("options", "named"),
    [({"activation": "relu"}, "activation='relu'"), ({"k": 2, "dropout": 0.5}, "dropout=0.5")],
)
def test_sparse_path_refuses_options_that_need_the_dense_code(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match="sparse_path=True") as error:
        SparseAutoencoder(8, 16, sparse_path=True, **options)
    assert named in str(error.value)
