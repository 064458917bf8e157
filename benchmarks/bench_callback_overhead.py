"""What the monitoring and schedule callbacks add to a Lightning training step, side by side in one run.

    python benchmarks/bench_callback_overhead.py                  # 3 runs of 2000 steps, blocks of 50
    python benchmarks/bench_callback_overhead.py --log-every 50   # usage logged 10x as often
    python benchmarks/bench_callback_overhead.py --no-op          # four callbacks that do nothing
    python benchmarks/bench_callback_overhead.py --accelerator gpu

A k-winners autoencoder (boosting and sensitivity on, so every callback has work) trains on the bundled 8x8
digits with an offline W&B logger, with NodeUsageLogger (scalars, histogram and sorted usage plot every
``--log-every`` steps with the callbacks on), SensitivitySchedule, DutyCycleBoosting and KSchedule (from k to k:
the schedule runs every step without changing how much work a step does). The callbacks' training hooks are
switched off and on in alternate blocks of ``--block`` steps of the same run, so that both kinds of block see the
same machine: on this one the speed moved by up to 1.7x from second to second, and comparing whole runs with and
without the callbacks (rounds alternating which went first) gave ratios from 0.85 to 1.39 with callbacks that did
nothing. The ratio is the time of all "on" blocks over that of all "off" blocks, so the occasional logging step
(the sorted usage plot, rendered by matplotlib, is most of it) and the W&B process writing what it logged are
spread over the steps as in training; usage is logged every ``2 * --log-every`` steps, which fall in "on" blocks
(the block size divides ``--log-every``), so once per ``--log-every`` steps with the callbacks on. "in hooks" is
the time inside the four callbacks' batch and epoch hooks per "on" step, a view free of the machine's drift.
``--no-op`` puts four callbacks without hooks in their place: Lightning's own cost of calling callbacks, and how
far the ratio strays when the callbacks do nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
import wandb
from _timing import describe, synchronizer
from pytorch_lightning.loggers import WandbLogger

from ksparse_pl.callbacks import DutyCycleBoosting, KSchedule, NodeUsageLogger, SensitivitySchedule
from ksparse_pl.data import DigitsDataModule
from ksparse_pl.models import SparseAutoencoder

WARMUP_BLOCKS = 2  # one block of each kind, untimed: the first steps build caches and compile the kernels
HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_train_epoch_start", "on_train_epoch_end")


class BlockClock(pl.Callback):
    """Switches the callbacks on in the odd blocks of ``block`` steps (by global step) and times both kinds of block.

    It must come first among the callbacks, so that a block's first step already runs with the new setting.
    """

    def __init__(self, block: int) -> None:
        self.block = block
        self.on = False
        self.counting = False
        self.seconds = {False: 0.0, True: 0.0}
        self.steps = {False: 0, True: 0}
        self._index = -1
        self._start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        index = trainer.global_step // self.block
        if index != self._index:
            synchronizer(trainer.strategy.root_device)()  # a GPU's queued steps belong to the block that queued them
            self._close(trainer.global_step)
            self._index, self.on, self.counting = index, index % 2 == 1, index >= WARMUP_BLOCKS
            self._start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, *args: Any) -> None:
        synchronizer(trainer.strategy.root_device)()
        self._close(trainer.global_step)

    def _close(self, global_step: int) -> None:
        if self.counting:
            self.seconds[self.on] += time.perf_counter() - self._start
            self.steps[self.on] += global_step - self._index * self.block

    def per_step(self, on: bool) -> float:
        return self.seconds[on] / self.steps[on]


def switched_hooks(callback: pl.Callback, clock: BlockClock, spent: list[float]) -> pl.Callback:
    """Run ``callback``'s training hooks only while ``clock`` has the callbacks on, adding their time (in the timed
    blocks) to ``spent[0]``."""
    for name in HOOKS:
        hook = getattr(callback, name)

        def switched(*args: Any, _hook: Any = hook) -> None:
            if not clock.on:
                return
            start = time.perf_counter()
            _hook(*args)
            if clock.counting:
                spent[0] += time.perf_counter() - start

        setattr(callback, name, switched)
    return callback


def monitoring_callbacks(log_every: int, hidden: int) -> list[pl.Callback]:
    return [
        NodeUsageLogger(every_n_steps=log_every),
        SensitivitySchedule(s_max_final=1.0),
        DutyCycleBoosting(boost_strength_factor=0.9),
        KSchedule(k_start=hidden // 16, k_end=hidden // 16),
    ]


def one_run(
    steps: int, block: int, log_every: int, hidden: int, no_op: bool, accelerator: str
) -> tuple[float, float, float]:
    """(seconds per step with the callbacks off, with them on, in their hooks per "on" step)."""
    pl.seed_everything(0, verbose=False)
    model = SparseAutoencoder(64, hidden, k=hidden // 16, activation="kwinners", boost_strength=1.0, sensitivity=True)
    clock = BlockClock(block)
    spent = [0.0]
    # Usage logged every 2 * log_every global steps: once per log_every steps with the callbacks on.
    added = [pl.Callback() for _ in range(4)] if no_op else monitoring_callbacks(2 * log_every, hidden)
    with tempfile.TemporaryDirectory() as logs:
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=1,
            max_steps=steps + WARMUP_BLOCKS * block,
            limit_val_batches=0,
            logger=WandbLogger(project="ksparse-pl-bench", save_dir=logs, offline=True),
            log_every_n_steps=10,
            callbacks=[clock, *(switched_hooks(callback, clock, spent) for callback in added)],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(model, DigitsDataModule(batch_size=64))
        wandb.finish()
    return clock.per_step(False), clock.per_step(True), spent[0] / clock.steps[True]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per run, half with the callbacks on")
    parser.add_argument("--block", type=int, default=50, help="steps per block; must divide --log-every")
    # About one MNIST epoch at batch 64 (NodeUsageLogger's default interval is one epoch).
    parser.add_argument("--log-every", type=int, default=500, help="steps with the callbacks on between usage logs")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--no-op", action="store_true", help="four callbacks that do nothing instead")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu", help="Lightning's accelerator")
    args = parser.parse_args()
    if args.log_every % args.block or args.steps % (2 * args.block):
        parser.error(
            f"--block {args.block} must divide --log-every ({args.log_every}), and twice it --steps ({args.steps})"
        )
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    os.environ.setdefault("WANDB_SILENT", "true")
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    print(f"torch {torch.__version__}, Lightning {pl.__version__}, {describe(device)}")
    print(
        f"SparseAutoencoder(64, {args.hidden}, kwinners + sensitivity), batch 64, {args.steps} timed steps per run "
        f"in blocks of {args.block}, usage logged every {args.log_every} steps with the callbacks on"
        + (" (no-op callbacks)" if args.no_op else "")
    )
    print("| run | off ms/step | on ms/step | ratio | in hooks ms/step |")
    print("|---|---|---|---|---|")
    ratios, shares = [], []
    for run in range(args.runs):
        off, on, hooks = one_run(args.steps, args.block, args.log_every, args.hidden, args.no_op, args.accelerator)
        ratios.append(on / off)
        shares.append(hooks / off)
        print(f"| {run + 1} | {off * 1e3:.2f} | {on * 1e3:.2f} | {on / off:.3f} | {hooks * 1e3:.3f} |", flush=True)
    print(
        f"median ratio {statistics.median(ratios):.3f}; time in the callbacks' hooks: "
        f"{statistics.median(shares):.1%} of a step with them off (median)"
    )


if __name__ == "__main__":
    main()
