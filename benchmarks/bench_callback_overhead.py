"""What the monitoring and schedule callbacks add to a Lightning training step, side by side in one process.

    python benchmarks/bench_callback_overhead.py                  # 3 alternating rounds of 1000 steps each
    python benchmarks/bench_callback_overhead.py --log-every 50   # usage logged 10x as often
    python benchmarks/bench_callback_overhead.py --no-op          # four callbacks that do nothing

The same k-winners autoencoder (boosting and sensitivity on, so every callback has work) trains on the
bundled 8x8 digits with an offline W&B logger, once bare and once with NodeUsageLogger (scalars, histogram
and sorted usage plot every ``--log-every`` steps), SensitivitySchedule, DutyCycleBoosting and KSchedule
(from k to k: the schedule runs every step without changing how much work a step does).
The cost per step is the wall time from the start of step 20 to the end of the run, over the steps: the
occasional logging step is spread over all of them, as it is in training (the sorted usage plot, rendered
by matplotlib, is most of it: about 0.1 s per layer on a 2-core CPU at the first log, which builds the figure;
a whole log takes 0.06-0.07 s after). Rounds alternate which set-up
runs first so that drift of the machine hits both; the table gives each round and the median ratio. As a
noise-free view, "in hooks" is the time spent inside the four callbacks' batch and epoch hooks, per step.
``--no-op`` puts four callbacks without hooks in their place: Lightning's own cost of calling callbacks, and
how far the wall-clock ratio strays on this machine when the callbacks do nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
import wandb
from pytorch_lightning.loggers import WandbLogger

from ksparse_pl.callbacks import DutyCycleBoosting, KSchedule, NodeUsageLogger, SensitivitySchedule
from ksparse_pl.data import DigitsDataModule
from ksparse_pl.models import SparseAutoencoder

WARMUP_STEPS = 20
HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_train_epoch_start", "on_train_epoch_end")


class StepClock(pl.Callback):
    """Wall time from the start of training batch ``WARMUP_STEPS`` to the end of training."""

    def __init__(self) -> None:
        self.start = 0.0
        self.end = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == WARMUP_STEPS:
            self.start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.end = time.perf_counter()
        self.steps = trainer.global_step - WARMUP_STEPS

    @property
    def seconds_per_step(self) -> float:
        return (self.end - self.start) / self.steps


def timed_hooks(callback: pl.Callback, clock: StepClock, spent: list[float]) -> pl.Callback:
    """Wrap ``callback``'s training hooks to add their time (once the clock runs) to ``spent[0]``."""
    for name in HOOKS:
        hook = getattr(callback, name)

        def timed(*args: Any, _hook: Any = hook) -> None:
            start = time.perf_counter()
            _hook(*args)
            if clock.start:
                spent[0] += time.perf_counter() - start

        setattr(callback, name, timed)
    return callback


def monitoring_callbacks(log_every: int, hidden: int) -> list[pl.Callback]:
    return [
        NodeUsageLogger(every_n_steps=log_every),
        SensitivitySchedule(s_max_final=1.0),
        DutyCycleBoosting(boost_strength_factor=0.9),
        KSchedule(k_start=hidden // 16, k_end=hidden // 16),
    ]


def seconds_per_step(
    with_callbacks: bool, steps: int, log_every: int, hidden: int, no_op: bool = False
) -> tuple[float, float]:
    """(wall seconds per step, seconds per step inside the sparse callbacks' hooks)."""
    pl.seed_everything(0, verbose=False)
    model = SparseAutoencoder(64, hidden, k=hidden // 16, activation="kwinners", boost_strength=1.0, sensitivity=True)
    clock = StepClock()
    spent = [0.0]
    callbacks: list[pl.Callback] = [clock]
    if with_callbacks:
        added = [pl.Callback() for _ in range(4)] if no_op else monitoring_callbacks(log_every, hidden)
        callbacks += [timed_hooks(callback, clock, spent) for callback in added]
    with tempfile.TemporaryDirectory() as logs:
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=steps + WARMUP_STEPS,
            limit_val_batches=0,
            logger=WandbLogger(project="ksparse-pl-bench", save_dir=logs, offline=True),
            log_every_n_steps=10,
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(model, DigitsDataModule(batch_size=64))
        wandb.finish()
    return clock.seconds_per_step, spent[0] / clock.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=1000)
    # About one MNIST epoch at batch 64 (NodeUsageLogger's default interval is one epoch).
    parser.add_argument("--log-every", type=int, default=500)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--no-op", action="store_true", help="four callbacks that do nothing instead")
    args = parser.parse_args()
    settings = (args.steps, args.log_every, args.hidden, args.no_op)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    os.environ.setdefault("WANDB_SILENT", "true")
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, Lightning {pl.__version__}, {platform.machine()}, {threads} threads")
    print(
        f"SparseAutoencoder(64, {args.hidden}, kwinners + sensitivity), batch 64, {args.steps} timed steps per run, "
        f"usage logged every {args.log_every} steps" + (" (no-op callbacks)" if args.no_op else "")
    )
    print("| round | bare ms/step | with callbacks ms/step | ratio | in hooks ms/step |")
    print("|---|---|---|---|---|")
    ratios, shares = [], []
    for round_ in range(args.rounds):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        results = {with_callbacks: seconds_per_step(with_callbacks, *settings) for with_callbacks in order}
        (bare, _), (full, hooks) = results[False], results[True]
        ratios.append(full / bare)
        shares.append(hooks / bare)
        row = f"| {round_ + 1} | {bare * 1e3:.2f} | {full * 1e3:.2f} | {full / bare:.3f} | {hooks * 1e3:.3f} |"
        print(row, flush=True)
    print(
        f"median ratio {statistics.median(ratios):.3f}; time in the callbacks' hooks: "
        f"{statistics.median(shares):.1%} of a bare step (median)"
    )


if __name__ == "__main__":
    main()
