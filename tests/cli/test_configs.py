"""Every experiment config runs as a user would start it (fast_dev_run; small local data instead of downloads)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ksparse_pl.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def small_mnist_like(path: Path, flatten: bool) -> list[str]:
    """Overrides that swap torchvision's download for a small local .npz of 28x28 images."""
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (120, 28, 28), dtype=np.uint8), y=np.arange(120) % 10)
    overrides = ["--data=ksparse_pl.data.ArrayDataModule", f"--data.path={path}", "--data.batch_size=16"]
    return overrides + (["--data.flatten=true"] if flatten else [])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_runs(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["ksparse-pl"])
    args = ["fit", "--config", str(config), "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"]
    if "VisionDataModule" in config.read_text():
        args += small_mnist_like(tmp_path / "mnist.npz", flatten="makhzani" in config.parts)
    main(args)


def test_every_experiment_family_has_configs() -> None:
    families = {p.parent.name for p in CONFIGS if p.parent != ROOT / "configs"}
    assert families == {"cottonwood", "makhzani", "numenta", "penalty"}
