"""Random grey image patches (Cottonwood's 11x11 patches), by default from scikit-learn's bundled photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ksparse_pl.data._tensor_module import TensorDataModule

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _grey(rgb: np.ndarray) -> np.ndarray:
    """(H, W[, C]) uint8 -> (H, W) float in [0, 1] (ITU-R 601 luma)."""
    image = rgb.astype(np.float32) / 255.0
    return image if image.ndim == 2 else image[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _read_folder(folder: Path) -> list[np.ndarray]:
    from PIL import Image

    if not folder.is_dir():
        raise FileNotFoundError(f"ImagePatchesDataModule: `folder` {str(folder)!r} is not a directory.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"ImagePatchesDataModule: `folder` {str(folder)!r} holds no {_IMAGE_SUFFIXES} images.")
    return [_grey(np.asarray(Image.open(p).convert("L"))) for p in files]


def _sample_images() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [_grey(image) for image in load_sample_images().images]


class ImagePatchesDataModule(TensorDataModule):
    """``num_patches`` random ``patch_size`` x ``patch_size`` grey patches, fixed by ``seed``; no labels.

    Args:
        folder: a folder of images (png, jpg, bmp, tif); default: the two photos bundled with scikit-learn.
        patch_size: side of a patch in pixels (Cottonwood: 11).
        num_patches: patches drawn (uniformly over images, then positions).
        center: subtract each patch's mean.
        flatten: give patches as vectors (autoencoders) rather than ``(1, p, p)`` images.
        batch_size, val_fraction, test_fraction, seed, num_workers: as :class:`DigitsDataModule`.

    Raises:
        FileNotFoundError: ``folder`` does not exist; ValueError: it holds no images, or an image is
        smaller than a patch (raised when the data is loaded, before training).

    Example:
        >>> dm = ImagePatchesDataModule(num_patches=1000, batch_size=10)
        >>> dm.setup("fit")
        >>> (x,) = next(iter(dm.train_dataloader()))
        >>> x.shape
        torch.Size([10, 121])
    """

    def __init__(
        self,
        folder: str | None = None,
        patch_size: int = 11,
        num_patches: int = 50_000,
        center: bool = False,
        flatten: bool = True,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        for name, value in (("patch_size", patch_size), ("num_patches", num_patches)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"Expected `{name}` to be an int >= 2, but got {value!r}.")
        self.save_hyperparameters()
        self.folder, self.patch_size, self.num_patches = folder, patch_size, num_patches
        self.center, self.flatten = center, flatten

    def load(self) -> tuple[Tensor, None]:
        images = _sample_images() if self.folder is None else _read_folder(Path(self.folder))
        p = self.patch_size
        for image in images:
            if min(image.shape) < p:
                raise ValueError(
                    f"ImagePatchesDataModule: an image of shape {image.shape} is smaller than `patch_size`={p}."
                )
        rng = np.random.default_rng(self.seed)
        which = rng.integers(0, len(images), self.num_patches)
        patches = np.empty((self.num_patches, p, p), dtype=np.float32)
        for i, index in enumerate(which):
            image = images[index]
            top, left = rng.integers(0, image.shape[0] - p + 1), rng.integers(0, image.shape[1] - p + 1)
            patches[i] = image[top : top + p, left : left + p]
        x = torch.from_numpy(patches).unsqueeze(1)  # (N, 1, p, p)
        if self.center:
            x = x - x.mean(dim=(1, 2, 3), keepdim=True)
        return (x.reshape(len(x), -1) if self.flatten else x), None
