"""The image each hidden unit of an autoencoder decodes to, as a grid (Cottonwood's feature pictures)."""

from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid, save_image
from typing_extensions import override

from ksparse_pl.callbacks._layers import sparse_layers
from ksparse_pl.callbacks._plots import log_image
from ksparse_pl.functional._checks import check_positive_int

_MIN_TILE = 32  # pixels per side of a unit's picture in the grid


def decoded_unit_images(
    decode: torch.nn.Module | object, code_dim: int, image_shape: tuple[int, ...], units: int, device: torch.device
) -> Tensor:
    """``(units, C, H, W)`` images: ``decode`` of one-hot codes (one unit at 1, the rest 0), each scaled
    to [0, 1] on its own so that weak and strong units are equally visible."""
    codes = torch.eye(code_dim, device=device)[:units]
    with torch.no_grad():
        images = decode(codes).float().reshape(units, *image_shape)  # type: ignore[operator]
    if images.dim() == 3:
        images = images.unsqueeze(1)  # (units, H, W) -> (units, 1, H, W)
    low = images.flatten(1).amin(dim=1).view(-1, 1, 1, 1)
    high = images.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    images = (images - low) / (high - low).clamp_min(1e-12)
    scale = max(1, _MIN_TILE // min(images.shape[-2:]))  # small patches (8x8 digits) would be specks
    return F.interpolate(images, scale_factor=scale, mode="nearest") if scale > 1 else images


class FeatureGridLogger(pl.Callback):
    """Every ``every_n_epochs`` training epochs and at the end of fit, decode one-hot codes and show the grid.

    Works for any LightningModule with a ``decode(z)`` method taking ``(B, code_dim)`` codes. The grid is
    saved as ``<save_dir>/features_epoch<E>.png`` and logged to W&B as ``features/decoded_units`` when a
    ``WandbLogger`` is in use. Only rank zero does either.

    Args:
        image_shape: ``(H, W)`` or ``(C, H, W)`` of a decoded sample; default: a square grey image.
        code_dim: width of the code; default: the module's ``hparams.hidden_dim``, else the width of its
            only sparse layer.
        max_units: show at most this many units (the first ones).
        every_n_epochs: interval in epochs.
        save_dir: where the PNGs go; default ``<trainer.default_root_dir>/feature_grids``.

    Raises:
        ValueError: an argument out of range; at setup, a module without ``decode`` or whose code width
            is unknown, or decoded samples that do not fit ``image_shape``.

    Example:
        >>> callback = FeatureGridLogger(image_shape=(11, 11), max_units=256)
    """

    def __init__(
        self,
        image_shape: tuple[int, ...] | None = None,
        code_dim: int | None = None,
        max_units: int = 256,
        every_n_epochs: int = 1,
        save_dir: str | None = None,
    ) -> None:
        if image_shape is not None and (len(image_shape) not in (2, 3) or min(image_shape) < 1):
            raise ValueError(f"FeatureGridLogger: expected `image_shape` (H, W) or (C, H, W), but got {image_shape!r}.")
        for name, value in (("max_units", max_units), ("every_n_epochs", every_n_epochs), ("code_dim", code_dim)):
            if value is not None:
                check_positive_int(value, name, "FeatureGridLogger")
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.code_dim = code_dim
        self.max_units = max_units
        self.every_n_epochs = every_n_epochs
        self.save_dir = save_dir
        self.saved: list[Path] = []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not callable(getattr(pl_module, "decode", None)):
            raise ValueError(
                f"FeatureGridLogger needs a module with a `decode(z)` method; {type(pl_module).__name__} has none."
            )
        if self.code_dim is None:
            self.code_dim = self._infer_code_dim(pl_module)
        sample = pl_module.decode(torch.zeros(1, self.code_dim, device=pl_module.device))  # type: ignore[operator]
        size = sample[0].numel()
        if self.image_shape is None:
            side = math.isqrt(size)
            if side * side != size:
                raise ValueError(
                    f"FeatureGridLogger: decoded samples have {size} values, not a square image; pass `image_shape`."
                )
            self.image_shape = (side, side)
        elif math.prod(self.image_shape) != size:
            raise ValueError(
                f"FeatureGridLogger: `image_shape`={self.image_shape} holds {math.prod(self.image_shape)} values, "
                f"but decoded samples have {size}."
            )

    @staticmethod
    def _infer_code_dim(pl_module: pl.LightningModule) -> int:
        hidden = pl_module.hparams.get("hidden_dim")
        if isinstance(hidden, int):
            return hidden
        layers = list(sparse_layers(pl_module).values())
        if len(layers) == 1:
            return layers[0].width
        raise ValueError(
            f"FeatureGridLogger: {type(pl_module).__name__} has no `hparams.hidden_dim` and {len(layers)} sparse "
            "layers; pass `code_dim`."
        )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.log_grid(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After fit, current_epoch counts the epochs done: the last one was logged iff it divides evenly.
        if (trainer.current_epoch % self.every_n_epochs) != 0 or not self.saved:
            self.log_grid(trainer, pl_module)

    @rank_zero_only
    def log_grid(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        """Save and log the grid now; returns the PNG's path."""
        assert self.code_dim is not None and self.image_shape is not None, "set up in setup('fit')"
        units = min(self.max_units, self.code_dim)
        images = decoded_unit_images(pl_module.decode, self.code_dim, self.image_shape, units, pl_module.device)
        grid = make_grid(images, nrow=math.ceil(math.sqrt(units)), padding=1, pad_value=1.0)
        directory = Path(self.save_dir or Path(trainer.default_root_dir) / "feature_grids")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"features_epoch{trainer.current_epoch:04d}.png"
        save_image(grid, path)
        self.saved.append(path)
        picture = (grid.permute(1, 2, 0).cpu().numpy() * 255).astype("uint8")  # (C, H, W) -> (H, W, C)
        log_image(trainer, "features/decoded_units", picture, caption=f"epoch {trainer.current_epoch}")
        return path
