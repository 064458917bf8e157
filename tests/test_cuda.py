"""The CUDA paths (torch's operations) against the CPU's (the compiled kernels), where a GPU is present.

CI has no GPU, so these are skipped there; they run on a GPU machine with ``pytest tests/test_cuda.py``.
Inputs are normal floats, where ties at the k-th score (which the two paths may break differently) do not occur.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import pytorch_lightning as pl
import torch
from quiet_trainer import quiet_trainer
from same_state import assert_same_state
from torch import nn

from ksparse_pl import KSparse, KSparse2d, KWinners, KWinners2d
from ksparse_pl.callbacks import DutyCycleBoosting, LSUVInit, NodeUsageLogger, SensitivitySchedule
from ksparse_pl.data import DigitsDataModule
from ksparse_pl.functional import keep_winners, sensitivity_step, sparse_decode, topk_encode, topk_indices
from ksparse_pl.models import SparseAutoencoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROWS, MAPS = (16, 96), (4, 12, 5, 5)
LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "KSparse": (lambda: KSparse(96, k=7), ROWS),
    "KSparse relu, by magnitude": (lambda: KSparse(96, k=7, relu=True, by_magnitude=True), ROWS),
    "KSparse threshold_mode": (lambda: KSparse(96, k=7, threshold_mode=True), ROWS),
    "KWinners boosting": (lambda: KWinners(96, k=7, duty_cycle_period=20), ROWS),
    "KWinners sensitivity": (lambda: KWinners(96, k=7, sensitivity=True, tau=5.0), ROWS),
    "KSparse2d channel": (lambda: KSparse2d(12, k=3), MAPS),
    "KWinners2d channel, sensitivity": (lambda: KWinners2d(12, k=3, sensitivity=True, tau=5.0), MAPS),
    "KSparse2d global": (lambda: KSparse2d(12, percent_on=0.1, mode="global", spatial_shape=(5, 5)), MAPS),
    "KWinners2d global, sensitivity": (
        lambda: KWinners2d(12, percent_on=0.1, mode="global", spatial_shape=(5, 5), sensitivity=True),
        MAPS,
    ),
}


@pytest.mark.parametrize("case", list(LAYERS))
def test_layer_on_cuda_matches_cpu(case: str) -> None:
    make, shape = LAYERS[case]
    on_cpu = make()
    on_cuda = copy.deepcopy(on_cpu).cuda()
    for _ in range(3):  # later steps select with the state the earlier ones left
        x, grad = torch.randn(shape), torch.randn(shape)
        x_cpu, x_cuda = x.clone().requires_grad_(), x.cuda().requires_grad_()
        out_cpu, out_cuda = on_cpu(x_cpu), on_cuda(x_cuda)
        out_cpu.backward(grad)
        out_cuda.backward(grad.cuda())
        torch.testing.assert_close(out_cuda.cpu(), out_cpu)
        torch.testing.assert_close(x_cuda.grad.cpu(), x_cpu.grad)
    assert_same_state(on_cpu, on_cuda)
    x = torch.randn(shape)
    torch.testing.assert_close(on_cuda.eval()(x.cuda()).cpu(), on_cpu.eval()(x))


@pytest.mark.parametrize("share", [0.0, 0.3])
def test_sensitivity_step_on_cuda_matches_cpu(share: float) -> None:
    """Torch's path, the kernels' answers; with nothing selected too (no pairs at all)."""
    selected, sensitivity = torch.rand(9, 6) < share, torch.rand(6) * 3 + 1
    factors, after = sensitivity_step(selected, sensitivity, s_max=10.0, tau=4.0)
    on_cuda = sensitivity_step(selected.cuda(), sensitivity.cuda(), s_max=10.0, tau=4.0)
    torch.testing.assert_close(on_cuda[0].cpu(), factors)
    torch.testing.assert_close(on_cuda[1].cpu(), after)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_coding_on_cuda_matches_the_dense_code(dtype: torch.dtype) -> None:
    """``embedding_bag`` and ``index_add_`` (the CUDA path) give the dense code's values and gradients."""
    m, d, k, batch = 300, 24, 5, 10
    leaves = [torch.randn(batch, d), torch.randn(m, d), torch.randn(m), torch.randn(m, d), torch.randn(d)]
    sparse = [t.to("cuda", dtype).requires_grad_() for t in leaves]
    dense = [t.to("cuda", dtype).requires_grad_() for t in leaves]
    x, w, b, rows, b_dec = sparse
    values, indices = topk_encode(x, w, b, k, relu=True)
    out_sparse = sparse_decode(values, indices, rows, b_dec)
    x, w, b, rows, b_dec = dense
    pre = torch.nn.functional.linear(x, w, b)
    code = keep_winners(pre, topk_indices(pre.detach(), k), relu=True)
    out_dense = torch.nn.functional.linear(code, rows.t(), b_dec)
    torch.testing.assert_close(out_sparse, out_dense)
    grad = torch.randn_like(out_dense)
    out_sparse.backward(grad)
    out_dense.backward(grad)
    for name, got, want in zip(("x", "weight", "bias", "rows", "decoder bias"), sparse, dense, strict=True):
        torch.testing.assert_close(got.grad, want.grad, msg=name)


AUTOENCODERS = {
    "ksparse": {"k": 4},
    "tied weights": {"k": 4, "tied_weights": True},
    "kwinners, sensitivity": {"k": 4, "activation": "kwinners", "sensitivity": True},
    "AuxK": {"k": 4, "auxk": 30},
}


@pytest.mark.parametrize("case", list(AUTOENCODERS))
def test_autoencoder_sparse_path_on_cuda_trains_like_the_dense_path(case: str) -> None:
    options = AUTOENCODERS[case]
    dense = SparseAutoencoder(16, 40, sparse_path=False, dead_after=1, **options).cuda()
    sparse = SparseAutoencoder(16, 40, sparse_path=True, dead_after=1, **options).cuda()
    sparse.load_state_dict(dense.state_dict())
    assert_trained_alike(dense, sparse, [torch.randn(8, 16, device="cuda") for _ in range(4)])


def test_default_autoencoder_on_cuda_trains_the_dense_path_below_the_gpu_threshold() -> None:
    """A default code layer of 2**18 weights takes the sparse path on a CPU (its decoder laid out for it) and the
    dense one on a GPU: equal to a twin built with ``sparse_path=False`` (the dense layout)."""
    torch.manual_seed(0)
    default = SparseAutoencoder(64, 4096, k=16, auxk=64, dead_after=1)
    dense = SparseAutoencoder(64, 4096, k=16, auxk=64, dead_after=1, sparse_path=False)
    dense.load_state_dict(default.state_dict())
    assert default.sparse_path and not default.trains_sparse(torch.device("cuda"))
    assert_trained_alike(dense.cuda(), default.cuda(), [torch.randn(8, 64, device="cuda") for _ in range(3)])


def assert_trained_alike(reference: SparseAutoencoder, model: SparseAutoencoder, batches: list[torch.Tensor]) -> None:
    """Train both from the same state on ``batches`` (SGD with momentum): the same parameters and layer state."""
    for each in (reference, model):
        each.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
        optimizer = torch.optim.SGD(each.parameters(), lr=0.1, momentum=0.9)
        for index, batch in enumerate(batches):
            each.training_step(batch, index).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert_same_state(reference, model, rtol=1e-4, atol=1e-5)


class StateDevices(pl.Callback):
    """Where the sparse layer's state is in training: Lightning moves the model back to the CPU after ``fit``."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        self.devices = {name: buffer.device.type for name, buffer in pl_module.sparse.named_buffers()}


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fit_on_the_gpu_with_the_callbacks(tmp_path, precision: str) -> None:
    pl.seed_everything(0, verbose=False)
    model = SparseAutoencoder(64, 256, k=16, activation="kwinners", boost_strength=1.0, sensitivity=True)
    usage, devices = NodeUsageLogger(every_n_steps=10**6), StateDevices()
    callbacks = [LSUVInit(num_samples=256), usage, SensitivitySchedule(), DutyCycleBoosting(0.9), devices]
    trainer = quiet_trainer(
        tmp_path, callbacks, accelerator="gpu", devices=1, max_epochs=2, precision=precision, limit_val_batches=2
    )
    trainer.fit(model, DigitsDataModule(batch_size=64))
    assert set(devices.devices.values()) == {"cuda"}, devices.devices
    layer = model.sparse
    for name, buffer in layer.named_buffers():
        assert not buffer.is_floating_point() or buffer.dtype == torch.float32, name
    samples = 2 * len(trainer.train_dataloader.dataset)
    assert int(layer.samples_seen) == samples
    counts = usage.log_usage(trainer, model)["sparse"]
    assert torch.equal(counts, layer.selection_count) and int(counts.sum()) == samples * 16
    assert float(layer.boost_strength) == pytest.approx(0.9**2)  # one decay per epoch
    assert torch.isfinite(torch.stack([p.detach().float().sum() for p in model.parameters()])).all()
