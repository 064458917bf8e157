"""The ``ksparse-pl`` console script: LightningCLI with any LightningModule and LightningDataModule.

``ksparse-pl fit --config configs/quickstart.yaml``; ``--print_config``; ``--model.help SparseAutoencoder``;
``validate``, ``test`` and ``predict`` as in every LightningCLI.
"""

from __future__ import annotations

import os

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities import rank_zero_info

# Imported so that `class_path: SparseAutoencoder` short names resolve in configs and on the command line.
import ksparse_pl.data  # noqa: F401
import ksparse_pl.models  # noqa: F401
from ksparse_pl.allocator import keep_freed_memory


class KSparseCLI(LightningCLI):
    """LightningCLI that ends ``fit`` with a summary: the last logged metrics and where the checkpoints are."""

    def after_fit(self) -> None:
        metrics = {name: float(value) for name, value in self.trainer.callback_metrics.items() if value.numel() == 1}
        lines = [f"  {name:<18} {value:.4f}" for name, value in sorted(metrics.items())]
        checkpoint = self.trainer.checkpoint_callback
        where = getattr(checkpoint, "best_model_path", "") or getattr(checkpoint, "last_model_path", "")
        rank_zero_info("\nFinal metrics:\n" + "\n".join(lines) + (f"\nCheckpoint: {where}" if where else ""))


def main(args: list[str] | None = None) -> None:
    """Run the CLI on ``args`` (default: ``sys.argv``), keeping freed memory for reuse (see
    :mod:`ksparse_pl.allocator`) unless ``KSPARSE_PL_KEEP_FREED_MEMORY=0``."""
    if os.environ.get("KSPARSE_PL_KEEP_FREED_MEMORY", "1") != "0":
        keep_freed_memory()
    build_cli(args)


def build_cli(args: list[str] | None = None, run: bool = True) -> KSparseCLI:
    """The CLI on ``args``; with ``run=False`` it only builds the model, datamodule and trainer of a config
    (``args`` then carry no subcommand), for scripts that drive the trainer themselves."""
    return KSparseCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
