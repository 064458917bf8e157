"""Any array data saved as ``.npz``: vectors or images, with or without labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ksparse_pl.data._tensor_module import TensorDataModule


class ArrayDataModule(TensorDataModule):
    """Samples from the arrays of an ``.npz`` file, split into train/val/test (stratified when labelled).

    ``x`` may hold vectors ``(N, d)`` or images ``(N, H, W)`` / ``(N, C, H, W)`` (``(N, H, W)`` gets a
    channel axis); integer arrays (``uint8`` images) are divided by ``scale``. Labels, when ``y_key`` is
    in the file, are integers ``(N,)``.

    Args:
        path: the ``.npz`` file.
        x_key: the array of samples.
        y_key: the array of labels; ``None`` or absent from the file: unlabelled.
        scale: divide the samples by this (255 for 8-bit images; 1 keeps them as they are).
        flatten: give every sample as a vector.
        batch_size, val_fraction, test_fraction, seed, num_workers: as :class:`DigitsDataModule`.

    Raises:
        FileNotFoundError: ``path`` does not exist (raised when the data is loaded, before training).
        KeyError: ``x_key`` (or a requested ``y_key``) is not in the file; the message lists its arrays.
        ValueError: labels whose count or shape does not match the samples.

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "data.npz")
        >>> np.savez(path, x=np.random.randint(0, 256, (50, 28, 28), dtype=np.uint8), y=np.arange(50) % 2)
        >>> dm = ArrayDataModule(path, batch_size=8)
        >>> dm.setup("fit")
        >>> dm.train_set.tensors[0].shape[1:], float(dm.train_set.tensors[0].max()) <= 1.0
        (torch.Size([1, 28, 28]), True)
    """

    def __init__(
        self,
        path: str,
        x_key: str = "x",
        y_key: str | None = "y",
        scale: float = 255.0,
        flatten: bool = False,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        if not scale > 0:
            raise ValueError(f"Expected `scale` > 0, but got {scale!r}.")
        self.save_hyperparameters()
        self.path = Path(path)
        self.x_key, self.y_key, self.scale, self.flatten = x_key, y_key, scale, flatten

    def load(self) -> tuple[Tensor, Tensor | None]:
        if not self.path.is_file():
            raise FileNotFoundError(f"ArrayDataModule: `path` {str(self.path)!r} is not a file.")
        with np.load(self.path) as arrays:
            if self.x_key not in arrays:
                raise KeyError(
                    f"ArrayDataModule: {str(self.path)!r} has no array {self.x_key!r} (`x_key`); "
                    f"it holds {sorted(arrays.files)}."
                )
            x_array = arrays[self.x_key]
            y_array = arrays[self.y_key] if self.y_key is not None and self.y_key in arrays else None
        x = torch.from_numpy(x_array).float() / self.scale
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
        if self.flatten:
            x = x.reshape(len(x), -1)
        if y_array is None:
            return x, None
        y = torch.from_numpy(y_array).long()
        if y.shape != (len(x),):
            raise ValueError(
                f"ArrayDataModule: labels {self.y_key!r} have shape {tuple(y.shape)}, expected ({len(x)},)."
            )
        return x, y
