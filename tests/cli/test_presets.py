"""Every callback preset in callbacks/ composes with a config and trains, as a user would run it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ksparse_pl.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
PRESETS = sorted((ROOT / "callbacks").glob("*.yaml"))

# What each preset needs from the model, as command-line overrides.
MODEL_OPTIONS = {
    "cottonwood": ["--model.init_args.sensitivity=true", "--model.init_args.by_magnitude=true"],
    "numenta": ["--model.init_args.boost_strength=1.0"],
    "monitoring": [],
}


def test_every_preset_is_covered() -> None:
    assert {p.stem for p in PRESETS} == set(MODEL_OPTIONS)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_composes_and_trains(preset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["ksparse-pl"])
    main(
        [
            "fit",
            "--config",
            str(QUICKSTART),
            f"--trainer.callbacks+={preset}",
            *MODEL_OPTIONS[preset.stem],
            "--trainer.max_epochs=2",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert list((tmp_path / "runs" / "ksparse-pl").glob("*/checkpoints/last.ckpt"))
    media = tmp_path / "runs" / "wandb"
    assert list(media.glob("offline-run-*/files/media/images/usage/sparse/sorted_*.png"))
    if "FeatureGridLogger" in preset.read_text():
        assert sorted(p.name for p in (tmp_path / "runs" / "feature_grids").glob("*.png")) == [
            "features_epoch0000.png",
            "features_epoch0001.png",
        ]
