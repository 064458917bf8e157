"""Sparse autoencoders as a LightningModule: top-k, k-winners, ReLU or linear codes, with the usual extras."""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch import Tensor, nn

from ksparse_pl import penalties
from ksparse_pl.functional import encode_at, scale_grad, sparse_decode
from ksparse_pl.functional._checks import check_positive_int
from ksparse_pl.layers import KSparse, KWinners
from ksparse_pl.layers._distributed import distributed, gather_statistics
from ksparse_pl.metrics import FractionOfVarianceUnexplained
from ksparse_pl.models._batch import inputs_of
from ksparse_pl.models._probe import linear_probe_accuracy

CodeActivation = Literal["ksparse", "kwinners", "relu", "linear"]
Penalty = Literal["none", "l1", "student_t", "kl", "mean_activation"]
_PENALTIES = {
    "l1": lambda h, _p: penalties.l1_penalty(h),
    "student_t": lambda h, _p: penalties.student_t_penalty(h),
    "kl": penalties.kl_sparsity_penalty,
    "mean_activation": penalties.mean_activation_penalty,
}


class SparseAutoencoder(pl.LightningModule):
    """Autoencoder with a sparse code: ``x -> encoder -> activation -> code -> linear decoder``.

    ``forward(x)`` returns the reconstruction with ``x``'s shape; ``encode`` gives the code and ``decode``
    maps a code back. Inputs of any shape ``(B, ...)`` with ``input_dim`` values are flattened; batches are
    tensors or ``(x, label)`` pairs.

    Logged: ``train/mse`` (and ``train/penalty``, ``train/auxk`` when used); ``val/mse``, ``val/fvu``
    (fraction of variance unexplained; 1.0 is the mean predictor), ``val/l0`` (mean active units per
    sample), ``val/dead_fraction`` (units never active in the validation epoch); the same under ``test/``;
    with ``linear_probe``, ``probe/accuracy`` and ``probe/raw_accuracy`` at the end of fit.

    Args:
        input_dim: values per input sample.
        hidden_dim: width M of the code.
        k: active code units per sample in training; required for ``ksparse``/``kwinners``.
        activation: ``ksparse`` (top-k), ``kwinners`` (top-k with the options below), or the dense baselines
            ``relu`` and ``linear``.
        encoder_hidden: widths of ReLU layers before the code layer (an MLP encoder); empty: linear encoder.
        k_inference_factor: eval mode keeps ``round(k * k_inference_factor)`` units (Makhzani's alpha).
        by_magnitude: rank code units by ``|h|`` and keep signs (Cottonwood).
        relu: zero negative winners (OpenAI's TopK SAE).
        boost_strength: Numenta duty-cycle boosting of the code; 0 is off.
        sensitivity: Cottonwood's sensitivity for rarely selected units.
        s_max: the sensitivity bound.
        tau: the sensitivity time constant, in samples.
        tied_weights: the decoder uses the code layer's weight, transposed (with its own bias); otherwise the
            decoder starts as that transpose (Gao et al.) and trains on its own.
        dropout: dropout on the code in training.
        penalty: activation penalty on the code (see :mod:`ksparse_pl.penalties`).
        penalty_weight: its coefficient in the loss.
        penalty_target: the target rate of ``kl`` and ``mean_activation``.
        auxk: Gao et al.'s AuxK: the top-``auxk`` dead units reconstruct the residual; 0 is off. Under DDP the
            residual's variance that normalizes it is the global batch's, so training matches one process.
        auxk_coefficient: its coefficient in the loss (Gao: 1/32).
        dead_after: training samples without firing after which a unit counts as dead for AuxK (under DDP,
            the samples of all processes count).
        linear_probe: at the end of fit, fit a logistic regression on the codes of the training split and
            report its test accuracy, and the same on raw inputs (needs labelled data).
        sparse_path: train without the dense ``(B, hidden_dim)`` code: the decoder sums the k winners'
            decoder rows per sample and the encoder's backward visits only the k winning rows (Gao et al.);
            same loss, gradients and layer state as the dense path, far cheaper for wide codes. ``None``:
            on for top-k codes when nothing needs the dense code (no ``dropout``, no ``penalty``) and the code
            layer has at least ``SPARSE_PATH_MIN_WEIGHTS`` weights on a CPU, ``SPARSE_PATH_MIN_WEIGHTS_GPU`` on
            a GPU (below them the dense path was as fast or faster); :meth:`trains_sparse` tells for a device.
            ``True`` takes it on every device. Validation, test, ``encode`` and ``decode`` stay dense.
        optimizer: builds the optimizer from the parameters (in configs: a ``class_path`` and ``init_args``).

    Example:
        >>> import torch
        >>> model = SparseAutoencoder(input_dim=64, hidden_dim=128, k=8)
        >>> x = torch.rand(5, 64)
        >>> model(x).shape, (model.encode(x) != 0).sum(dim=1).tolist()
        (torch.Size([5, 64]), [8, 8, 8, 8, 8])
    """

    idle_samples: Tensor

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        k: int | None = None,
        activation: CodeActivation = "ksparse",
        encoder_hidden: list[int] | None = None,
        k_inference_factor: float = 1.0,
        by_magnitude: bool = False,
        relu: bool = False,
        boost_strength: float = 0.0,
        sensitivity: bool = False,
        s_max: float = 10.0,
        tau: float = 100.0,
        tied_weights: bool = False,
        dropout: float = 0.0,
        penalty: Penalty = "none",
        penalty_weight: float = 0.0,
        penalty_target: float = 0.0,
        auxk: int = 0,
        auxk_coefficient: float = 1 / 32,
        dead_after: int = 10_000,
        linear_probe: bool = False,
        sparse_path: bool | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
    ) -> None:
        super().__init__()
        check_positive_int(input_dim, "input_dim")
        check_positive_int(hidden_dim, "hidden_dim")
        if penalty != "none" and penalty not in _PENALTIES:
            raise ValueError(f"Expected `penalty` to be one of {('none', *_PENALTIES)}, but got {penalty!r}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"Expected `dropout` in [0, 1), but got {dropout!r}.")
        if auxk < 0 or auxk > hidden_dim:
            raise ValueError(f"Expected `auxk` in [0, {hidden_dim}] (the code width), but got {auxk!r}.")
        self.save_hyperparameters(ignore=["optimizer"])
        self.input_dim = input_dim
        self.optimizer_factory = optimizer
        widths = [input_dim, *(encoder_hidden or [])]
        trunk: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            trunk += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.trunk = nn.Sequential(*trunk)
        self.encoder = nn.Linear(widths[-1], hidden_dim)
        self.sparse = _code_activation(activation, hidden_dim, k, self.hparams)
        self.code_dropout = nn.Dropout(dropout)
        code_weights = hidden_dim * widths[-1]
        # Whether the sparse path may be taken: the decoder is then laid out for it, on every device.
        self.sparse_path = _resolve_sparse_path(sparse_path, activation, code_weights, dropout, penalty)
        self._sparse_path_on_gpu = sparse_path is True or code_weights >= SPARSE_PATH_MIN_WEIGHTS_GPU
        # A tied decoder is the code layer's weight transposed with a bias of its own; an untied one is a Linear
        # layer (so initializers and LSUV see it) that starts as the encoder's transpose (Gao et al.).
        self.decoder: nn.Linear | None = None
        self.decoder_bias: nn.Parameter | None = None
        if tied_weights and encoder_hidden:
            raise ValueError("`tied_weights` needs a linear encoder (no `encoder_hidden` layers).")
        if tied_weights:
            self.decoder_bias = nn.Parameter(torch.zeros(input_dim))
        else:
            self.decoder = nn.Linear(hidden_dim, input_dim)
            if self.sparse_path:
                # Stored transposed, so that each unit's decoder row is contiguous and the sparse decode reads
                # k rows per sample without copying the weight; it is still a (input_dim, hidden_dim) weight.
                self.decoder.weight = nn.Parameter(torch.empty(hidden_dim, input_dim).t())
                self.decoder.reset_parameters()
            if not encoder_hidden:
                with torch.no_grad():
                    self.decoder.weight.copy_(self.encoder.weight.t())
                    self.decoder.bias.zero_()
        self.register_buffer("idle_samples", torch.zeros(hidden_dim, dtype=torch.long))
        self.val_fvu = FractionOfVarianceUnexplained()
        self.test_fvu = FractionOfVarianceUnexplained()
        self._active: Tensor | None = None
        self.probe_accuracy: float | None = None

    @property
    def _options(self) -> Any:
        """The ``__init__`` arguments, as saved by ``save_hyperparameters``."""
        return self.hparams

    def _flat(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)  # (B, ...) -> (B, input_dim)
        if flat.shape[1] != self.input_dim:
            raise ValueError(
                f"SparseAutoencoder expects {self.input_dim} values per sample (`input_dim`), "
                f"but got input of shape {tuple(x.shape)}."
            )
        return flat

    def preactivation(self, x: Tensor) -> Tensor:
        """The code layer's input ``(B, hidden_dim)``, before the sparse activation."""
        return self.encoder(self.trunk(self._flat(x)))

    def encode(self, x: Tensor) -> Tensor:
        """The code ``(B, hidden_dim)`` of inputs ``(B, ...)``."""
        return self.code_dropout(self.sparse(self.preactivation(x)))

    def decode(self, z: Tensor) -> Tensor:
        """The flat reconstruction ``(B, input_dim)`` of codes ``(B, hidden_dim)``."""
        if self.decoder is not None:
            return self.decoder(z)
        return F.linear(z, self.encoder.weight.t(), self.decoder_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x)).view(x.shape)

    def trains_sparse(self, device: torch.device) -> bool:
        """Whether a training step on ``device`` takes the sparse path (see ``sparse_path``).

        Example:
            >>> model = SparseAutoencoder(input_dim=64, hidden_dim=4096, k=32)  # 2**18 code-layer weights
            >>> model.trains_sparse(torch.device("cpu")), model.trains_sparse(torch.device("cuda"))
            (True, False)
        """
        return self.sparse_path and (device.type == "cpu" or self._sparse_path_on_gpu)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self._flat(inputs_of(batch))
        features = self.trunk(x)
        sparse = self.trains_sparse(x.device)
        if sparse:
            pre, recon, fired = self._sparse_reconstruction(features)
        else:
            pre = self.encoder(features)
            code = self.code_dropout(self.sparse(pre))
            recon = self.decode(code)
            fired = (code != 0).any(dim=0)
        loss = F.mse_loss(recon, x)
        self.log("train/mse", loss, prog_bar=True)
        hp = self._options
        if hp.penalty != "none":
            penalty = _PENALTIES[hp.penalty](code, hp.penalty_target)
            self.log("train/penalty", penalty)
            loss = loss + hp.penalty_weight * penalty
        with torch.no_grad():
            fired, samples = _fired_in_global_batch(fired, len(x))
            self.idle_samples = torch.where(fired, 0, self.idle_samples + samples)
        if hp.auxk > 0:
            auxk = self._auxk_loss(x - recon.detach(), pre, features, sparse)
            self.log("train/auxk", auxk)
            loss = loss + hp.auxk_coefficient * auxk
        return loss

    def _sparse_reconstruction(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The training forward of ``sparse_path``: ``(preactivation without grad, reconstruction, fired units)``."""
        weight, bias = self.encoder.weight, self.encoder.bias
        with torch.no_grad():
            pre = F.linear(features, weight, bias)
        assert isinstance(self.sparse, KSparse), "sparse_path is only enabled for top-k codes"
        indices, grad_scale = self.sparse.select(pre)
        values = encode_at(features, weight, bias, indices, pre)
        if grad_scale is not None:
            values = scale_grad(values, grad_scale)
        if self.sparse.relu:
            values = values.relu()
        recon = sparse_decode(values, indices, self._decoder_rows(), self._decoder_bias())
        # Counted rather than set through a boolean index, which waits for a GPU to know how many it selects.
        nonzero = (values.detach() != 0).reshape(-1).int()
        fired = torch.zeros(pre.shape[1], dtype=torch.int32, device=pre.device)
        return pre, recon, fired.index_add_(0, indices.reshape(-1), nonzero) > 0

    def _decoder_rows(self) -> Tensor:
        """``(hidden_dim, input_dim)``: row j is unit j's decoding (without bias)."""
        return self.encoder.weight if self.decoder is None else self.decoder.weight.t()

    def _decoder_bias(self) -> Tensor:
        bias = self.decoder_bias if self.decoder is None else self.decoder.bias
        assert bias is not None
        return bias

    def _auxk_loss(self, residual: Tensor, pre: Tensor, features: Tensor, sparse: bool) -> Tensor:
        """Gao et al.: the top dead units alone reconstruct the residual, normalized by its variance.

        Under DDP the normalizer is the global batch's and the loss is this rank's share times the number of
        ranks: DDP averages the ranks' gradients, which then equal one process's over the global batch.
        """
        dead = self.idle_samples >= self._options.dead_after
        k_aux = min(self._options.auxk, int(dead.sum()))
        if k_aux == 0:
            return pre.new_zeros(())
        indices = pre.detach().masked_fill(~dead, float("-inf")).topk(k_aux, dim=1).indices
        if sparse:
            values = encode_at(features, self.encoder.weight, self.encoder.bias, indices, pre).relu()
            reconstruction = sparse_decode(values, indices, self._decoder_rows())
        else:
            code = torch.zeros_like(pre).scatter(1, indices, pre.gather(1, indices).relu())
            reconstruction = code @ self._decoder_rows()  # no bias: it reconstructs a residual
        error = (reconstruction - residual).square().sum()
        if not distributed():
            return error / _spread(residual).clamp_min(1e-12)
        return error / _global_spread(residual).clamp_min(1e-12) * dist.get_world_size()

    def _evaluate(self, batch: Any, stage: str, fvu: FractionOfVarianceUnexplained) -> None:
        x = inputs_of(batch)
        code = self.encode(x)
        recon = self.decode(code).view(x.shape)
        fvu.update(recon, x)
        active = (code != 0).any(dim=0)
        self._active = active if self._active is None else self._active | active
        self.log(f"{stage}/mse", F.mse_loss(recon, x), prog_bar=stage == "val")
        self.log(f"{stage}/fvu", fvu, prog_bar=stage == "val")
        self.log(f"{stage}/l0", (code != 0).sum(dim=1).float().mean())

    def _log_dead_fraction(self, stage: str) -> None:
        if self._active is not None:
            active = self.trainer.strategy.reduce(self._active.float(), reduce_op="sum") > 0
            self.log(f"{stage}/dead_fraction", 1.0 - active.float().mean())
            self._active = None

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_fvu)

    def on_validation_epoch_end(self) -> None:
        self._log_dead_fraction("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_fvu)

    def on_test_epoch_end(self) -> None:
        self._log_dead_fraction("test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The codes of the batch."""
        return self.encode(inputs_of(batch))

    def on_fit_end(self) -> None:
        if self._options.linear_probe:
            self.run_linear_probe()

    @torch.no_grad()
    def run_linear_probe(self) -> dict[str, float]:
        """Logistic regression on the codes (and on raw inputs) of the datamodule's train and test splits."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not all(hasattr(datamodule, name) for name in ("train_set", "test_set")):
            raise ValueError("`linear_probe` needs a datamodule with `train_set` and `test_set` (as ours have).")
        datamodule.setup("test")
        train, test = datamodule.train_set.tensors, datamodule.test_set.tensors
        if len(train) < 2:
            raise ValueError("`linear_probe` needs labelled data: the datamodule's batches have no labels.")
        was_training = self.training
        self.eval()
        codes = [self.encode(t.to(self.device)) for t in (train[0], test[0])]
        self.train(was_training)
        results = {
            "probe/accuracy": linear_probe_accuracy(codes[0], train[1], codes[1], test[1]),
            "probe/raw_accuracy": linear_probe_accuracy(train[0], train[1], test[0], test[1]),
        }
        self.probe_accuracy = results["probe/accuracy"]
        if self.trainer.is_global_zero:
            for logger in self.trainer.loggers:
                logger.log_metrics(results, step=self.trainer.global_step)
        return results

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())


SPARSE_PATH_MIN_WEIGHTS = 2**18
"""Code-layer weights (``hidden_dim`` x its fan-in) from which ``sparse_path=None`` turns the sparse path on.

``benchmarks/bench_autoencoder_paths.py`` on a 2-core CPU, the dense step's time over the sparse one's: 0.99 at
64 x 256, 1.15 at 64 x 1024, 1.48-1.79 at 768 x 512, 784 x 1000 and 768 x 4096 (README, Performance).
"""

SPARSE_PATH_MIN_WEIGHTS_GPU = 2**25
"""The same on a GPU (any device but the CPU). On an NVIDIA H100 (README, Performance) the dense step was faster at
every shape of ``benchmarks/bench_autoencoder_paths.py`` (up to 768 x 4096) and at 16384 x 768 (2^23.6 weights) in
``benchmarks/bench_sparse_autoencoder.py``, the sparse one at 65536 x 768 (2^25.6); no width between was measured.
"""


def _resolve_sparse_path(requested: bool | None, activation: str, weights: int, dropout: float, penalty: str) -> bool:
    possible = activation in ("ksparse", "kwinners") and dropout == 0 and penalty == "none"
    if requested is None:
        return possible and weights >= SPARSE_PATH_MIN_WEIGHTS
    if requested and not possible:
        raise ValueError(
            "`sparse_path=True` needs a top-k code (`activation` 'ksparse' or 'kwinners') with no `dropout` and no "
            f"`penalty`, but got activation={activation!r}, dropout={dropout!r}, penalty={penalty!r}."
        )
    return requested


def _code_activation(name: str, width: int, k: int | None, hp: Any) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "linear":
        return nn.Identity()
    if name not in ("ksparse", "kwinners"):
        raise ValueError(f"Expected `activation` to be one of ('ksparse', 'kwinners', 'relu', 'linear'), got {name!r}.")
    if k is None:
        raise ValueError(f"`activation={name!r}` needs `k`, the number of active code units.")
    layer = KWinners if name == "kwinners" else KSparse
    return layer(
        width,
        k,
        k_inference_factor=hp.k_inference_factor,
        by_magnitude=hp.by_magnitude,
        relu=hp.relu,
        boost_strength=hp.boost_strength,
        sensitivity=hp.sensitivity,
        s_max=hp.s_max,
        tau=hp.tau,
    )


def _spread(values: Tensor) -> Tensor:
    """The sum over samples (dim 0) of each sample's squared distance to their mean."""
    return (values - values.mean(0)).square().sum()


def _global_spread(values: Tensor) -> Tensor:
    """:func:`_spread` over every process's samples: each process's count, mean and spread, gathered and combined
    (Chan et al.'s pairwise update, in float64), as one process over the global batch would compute it."""
    mean = values.mean(0).reshape(-1)
    local = torch.cat([mean.new_tensor([values.shape[0]]), mean, _spread(values)[None]]).double()
    gathered, _ = gather_statistics(local)  # (ranks, 1 + features + 1)
    counts, means, spreads = gathered[:, 0], gathered[:, 1:-1], gathered[:, -1]
    overall = (counts[:, None] * means).sum(0) / counts.sum()
    return (spreads.sum() + (counts * (means - overall).square().sum(1)).sum()).to(values.dtype)


def _fired_in_global_batch(fired: Tensor, samples: int) -> tuple[Tensor, Tensor | int]:
    """The units that fired in any process's batch, and how many samples all processes' batches hold.

    Each process sees only its share of the global batch, and DDP would otherwise leave every rank with idle
    counts of its own (or, broadcasting rank 0's buffers, with rank 0's): one process over the global batch
    counts every sample.
    """
    if not distributed():  # this batch is the global one: no concatenation and sums in every training step
        return fired, samples
    local = torch.cat([fired.long(), fired.new_tensor([samples], dtype=torch.long)])
    gathered, _ = gather_statistics(local)  # (ranks, hidden_dim + 1)
    return gathered[:, :-1].sum(0) > 0, gathered[:, -1].sum()
