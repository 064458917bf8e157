"""The `ksparse-pl` console script as a user runs it: configs, help, errors, W&B offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ksparse_pl.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory and HOME with no W&B login."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["ksparse-pl"])
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return tmp_path


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(cwd)
    return subprocess.run(
        [sys.executable, "-m", "ksparse_pl.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_validate_test_predict_from_checkpoint(user_dir: Path) -> None:
    base = ["--config", str(QUICKSTART), "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    main(
        [
            "fit",
            *base,
            "--trainer.max_epochs=1",
            "--trainer.callbacks+=ModelCheckpoint",
            "--trainer.callbacks.dirpath=ckpt",
            "--trainer.callbacks.filename=model",
        ]
    )
    checkpoint = user_dir / "ckpt" / "model.ckpt"
    assert checkpoint.exists()
    for command in ("validate", "test", "predict"):
        main([command, *base, f"--ckpt_path={checkpoint}"])


def test_print_config_and_model_help(user_dir: Path) -> None:
    result = run_cli("fit", "--config", str(QUICKSTART), "--print_config", cwd=user_dir)
    assert result.returncode == 0, result.stderr
    assert "class_path: ksparse_pl.models.SparseAutoencoder" in result.stdout
    assert "k: 16" in result.stdout
    result = run_cli("fit", "--model.help", "SparseAutoencoder", cwd=user_dir)
    assert result.returncode == 0, result.stderr
    assert "--model.k_inference_factor" in result.stdout and "Makhzani" in result.stdout


def test_unknown_key_names_the_key(user_dir: Path) -> None:
    result = run_cli("fit", "--config", str(QUICKSTART), "--model.init_args.hidden_dims=3", cwd=user_dir)
    assert result.returncode != 0
    assert "hidden_dims" in result.stderr


def test_wrong_type_names_the_key(user_dir: Path) -> None:
    result = run_cli("fit", "--config", str(QUICKSTART), "--model.init_args.k=many", cwd=user_dir)
    assert result.returncode != 0
    assert "k" in result.stderr and "many" in result.stderr


def test_k_out_of_range_names_k_and_width(user_dir: Path) -> None:
    result = run_cli("fit", "--config", str(QUICKSTART), "--model.init_args.k=300", cwd=user_dir)
    assert result.returncode != 0
    assert "Expected `k` to be an int in [1, 256]" in result.stderr and "300" in result.stderr


def test_quickstart_as_a_new_user(user_dir: Path) -> None:
    """The README's main job, end to end, with no W&B login and no stdin."""
    result = run_cli("fit", "--config", str(QUICKSTART), cwd=user_dir, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    fvu = float(out.split("val/fvu")[-1].split()[0])
    assert fvu < 0.2
    runs = user_dir / "runs"
    assert list(runs.glob("ksparse-pl/*/checkpoints/last.ckpt"))
    offline_runs = list((runs / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
    assert f"wandb sync runs/wandb/{offline_runs[0].name}" in out
    assert (runs / "config.yaml").exists()
