import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ksparse_pl.data import ArrayDataModule, VisionDataModule


def test_array_images_labels_and_split(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.randint(0, 256, (100, 6, 6), dtype=np.uint8), y=np.arange(100) % 4)
    dm = ArrayDataModule(str(path), val_fraction=0.1, test_fraction=0.2, batch_size=10)
    dm.setup("fit")
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [70, 10, 20]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (10, 1, 6, 6) and x.max() <= 1 and y.dtype == torch.long
    assert torch.bincount(dm.test_set.tensors[1]).tolist() == [5, 5, 5, 5]


def test_array_unlabelled_vectors(tmp_path: Path) -> None:
    path = tmp_path / "v.npz"
    np.savez(path, features=np.random.rand(40, 5).astype(np.float32))
    dm = ArrayDataModule(str(path), x_key="features", scale=1.0, flatten=True)
    dm.setup("fit")
    (x,) = next(iter(dm.train_dataloader()))
    assert x.shape[1] == 5


def test_array_errors_name_the_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="`path` '.*missing.npz' is not a file"):
        ArrayDataModule(str(tmp_path / "missing.npz")).setup("fit")
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((10, 4)))
    with pytest.raises(KeyError, match=r"has no array 'x' \(`x_key`\); it holds \['images'\]"):
        ArrayDataModule(str(path)).setup("fit")
    np.savez(path, x=np.zeros((10, 4)), y=np.zeros((9,)))
    with pytest.raises(ValueError, match=r"labels 'y' have shape \(9,\), expected \(10,\)"):
        ArrayDataModule(str(path)).setup("fit")


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of the MNIST files (what torchvision reads)."""
    code = 0x08  # unsigned byte
    header = struct.pack(">I", (code << 8) | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_vision_mnist_from_local_files(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    dm = VisionDataModule("MNIST", root=str(tmp_path), val_fraction=0.5, batch_size=4)
    dm.setup("fit")
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [30, 30, 20]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 28, 28) and x.min() >= 0 and x.max() <= 1


def test_vision_missing_data_without_download(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not found"):
        VisionDataModule("MNIST", root=str(tmp_path), download=False).setup("fit")
    with pytest.raises(ValueError, match="`dataset`.*'SVHN'"):
        VisionDataModule("SVHN")  # type: ignore[arg-type]


def test_shared_mnist_test_split_is_readable() -> None:
    """The real data the benchmarks use (../shared/data) parses as its README says."""
    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist-t10k" / "t10k-labels-idx1-ubyte.gz"
    if not path.exists():
        pytest.skip("../shared/data is not beside this checkout")
    labels = np.frombuffer(gzip.decompress(path.read_bytes())[8:], dtype=np.uint8)
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
