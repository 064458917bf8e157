"""A k-sparse autoencoder as a LightningModule: linear encoder, top-k hidden layer, linear decoder."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch import Tensor, nn

from ksparse_pl.layers import KSparse
from ksparse_pl.metrics import FractionOfVarianceUnexplained
from ksparse_pl.models._batch import inputs_of


class SparseAutoencoder(pl.LightningModule):
    """Autoencoder whose hidden code keeps only ``k`` of ``hidden_dim`` units per sample (Makhzani & Frey).

    ``forward(x)`` returns the reconstruction with ``x``'s shape; ``encode`` gives the sparse code and
    ``decode`` maps a code back. Inputs of any shape ``(B, ...)`` with ``input_dim`` values per sample are
    flattened. Batches may be tensors or ``(x, label)`` pairs.

    Logged: ``train/mse``; ``val/mse``, ``val/fvu`` (fraction of variance unexplained, 1.0 is the
    mean predictor) and ``val/l0`` (mean active units per sample); the same under ``test/``.

    Args:
        input_dim: values per input sample.
        hidden_dim: width M of the code.
        k: active code units per sample in training.
        k_inference_factor: eval mode keeps ``round(k * k_inference_factor)`` units (Makhzani's alpha).
        by_magnitude: rank code units by ``|h|`` and keep signs (Cottonwood).
        relu: zero negative winners (OpenAI's TopK SAE).
        boost_strength: Numenta duty-cycle boosting of the code; 0 is off.
        sensitivity: Cottonwood's sensitivity for rarely selected units.
        s_max: the sensitivity bound.
        tau: the sensitivity time constant, in samples.
        tied_weights: the decoder uses the encoder's weight, transposed (with its own bias).
        optimizer: builds the optimizer from the parameters (in configs: a ``class_path`` and ``init_args``).

    Example:
        >>> import torch
        >>> model = SparseAutoencoder(input_dim=64, hidden_dim=128, k=8)
        >>> x = torch.rand(5, 64)
        >>> model(x).shape, (model.encode(x) != 0).sum(dim=1).tolist()
        (torch.Size([5, 64]), [8, 8, 8, 8, 8])
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        k: int,
        k_inference_factor: float = 1.0,
        by_magnitude: bool = False,
        relu: bool = False,
        boost_strength: float = 0.0,
        sensitivity: bool = False,
        s_max: float = 10.0,
        tau: float = 100.0,
        tied_weights: bool = False,
        optimizer: OptimizerCallable = torch.optim.Adam,
    ) -> None:
        super().__init__()
        for name, value in (("input_dim", input_dim), ("hidden_dim", hidden_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected `{name}` to be an int >= 1, but got {value!r}.")
        self.save_hyperparameters(ignore=["optimizer"])
        self.input_dim = input_dim
        self.optimizer_factory = optimizer
        self.encoder = nn.Linear(input_dim, hidden_dim)
        self.sparse = KSparse(
            hidden_dim,
            k,
            k_inference_factor=k_inference_factor,
            by_magnitude=by_magnitude,
            relu=relu,
            boost_strength=boost_strength,
            sensitivity=sensitivity,
            s_max=s_max,
            tau=tau,
        )
        # A tied decoder is the encoder's weight transposed with a bias of its own; an untied one is a Linear
        # layer (so initializers and LSUV see it) that starts as the encoder's transpose (Gao et al.).
        self.decoder: nn.Linear | None = None
        self.decoder_bias: nn.Parameter | None = None
        if tied_weights:
            self.decoder_bias = nn.Parameter(torch.zeros(input_dim))
        else:
            self.decoder = nn.Linear(hidden_dim, input_dim)
            with torch.no_grad():
                self.decoder.weight.copy_(self.encoder.weight.t())
                self.decoder.bias.zero_()
        self.val_fvu = FractionOfVarianceUnexplained()
        self.test_fvu = FractionOfVarianceUnexplained()

    def _flat(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)  # (B, ...) -> (B, input_dim)
        if flat.shape[1] != self.input_dim:
            raise ValueError(
                f"SparseAutoencoder expects {self.input_dim} values per sample (`input_dim`), "
                f"but got input of shape {tuple(x.shape)}."
            )
        return flat

    def encode(self, x: Tensor) -> Tensor:
        """The sparse code ``(B, hidden_dim)`` of inputs ``(B, ...)``."""
        return self.sparse(self.encoder(self._flat(x)))

    def decode(self, z: Tensor) -> Tensor:
        """The flat reconstruction ``(B, input_dim)`` of codes ``(B, hidden_dim)``."""
        if self.decoder is not None:
            return self.decoder(z)
        return F.linear(z, self.encoder.weight.t(), self.decoder_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x)).view(x.shape)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = inputs_of(batch)
        loss = F.mse_loss(self(x), x)
        self.log("train/mse", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: Any, stage: str, fvu: FractionOfVarianceUnexplained) -> None:
        x = inputs_of(batch)
        code = self.encode(x)
        recon = self.decode(code).view(x.shape)
        fvu.update(recon, x)
        self.log(f"{stage}/mse", F.mse_loss(recon, x), prog_bar=stage == "val")
        self.log(f"{stage}/fvu", fvu, prog_bar=stage == "val")
        self.log(f"{stage}/l0", (code != 0).sum(dim=1).float().mean())

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_fvu)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_fvu)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The sparse codes of the batch."""
        return self.encode(inputs_of(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())
