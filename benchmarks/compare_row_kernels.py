"""The row kernel's call against the same call built from another git revision's sources, in one process.

    python benchmarks/compare_row_kernels.py --base HEAD~1
    python benchmarks/compare_row_kernels.py --base 4435281 --rounds 41 --boost --threads 1

The C sources at ``--base`` are compiled the way the package compiles its own (same compiler and flags) into a
temporary library, loaded next to this checkout's. Each case calls ``ksparse_select_rows`` as a layer's training
step does (output, gradient bits and win counts, no winners' ids) at the three shapes of ``bench_activations.py``.
The two builds take turns, the first of each round alternating; a round times each as the median of ``--repeats``
calls, and a case reports the median over the rounds of this checkout's time over the base's, with its range. Gains
of a few per cent, which the layer benchmark's ratios to ReLU cannot show, show here. Both builds must give the same
output, bits and counts, or the script stops.

Rows: ``normal``; ``scales`` (each row on its own scale, 0.01 to 100, and offset); ``trained`` (the encoder's
pre-activations of a top-k autoencoder trained for a few seconds on scikit-learn's embedded digits, the way a layer's
rows are skewed after training).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from sklearn.datasets import load_digits

from ksparse_pl.functional.native import (
    _FLAGS,
    _HEADERS,
    _PARALLEL_FLAGS,
    _SOURCES,
    KERNEL_WIDTHS,
    _widest_allowed,
    library,
)
from ksparse_pl.functional.native_topk import _normal_quantiles

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(256, 4096, 0.05), (256, 1024, 0.10), (1024, 512, 0.25)]
# The functions called in both builds, with this checkout's argument types (a base with another signature won't do).
FUNCTIONS = ("ksparse_init", "ksparse_select_rows")


def build_at(revision: str, folder: Path) -> ctypes.CDLL:
    """The kernels of ``revision``'s sources, compiled into ``folder`` and loaded."""
    for path in (*_SOURCES, *_HEADERS):
        relative = path.relative_to(ROOT).as_posix()
        shown = subprocess.run(["git", "show", f"{revision}:{relative}"], cwd=ROOT, capture_output=True, text=True)
        if shown.returncode != 0:
            raise SystemExit(f"--base {revision}: git cannot show {relative}: {shown.stderr.strip()}")
        (folder / path.name).write_text(shown.stdout)
    target = folder / "kernels.so"
    sources = [str(folder / path.name) for path in _SOURCES]
    compiler = os.environ.get("CC", "cc")
    subprocess.run([compiler, *_FLAGS, *_PARALLEL_FLAGS, "-o", str(target), *sources, "-lm"], check=True)
    lib = ctypes.CDLL(str(target))
    for name in FUNCTIONS:
        ours, theirs = getattr(library(), name), getattr(lib, name)
        theirs.argtypes, theirs.restype = ours.argtypes, ours.restype
    return lib


def trained_rows(batch: int, n: int, k: int) -> torch.Tensor:
    """Pre-activations of a top-k autoencoder's encoder after 300 Adam steps on the digits (repeated to ``batch``)."""
    digits = torch.tensor(load_digits().data, dtype=torch.float32) / 16
    encoder, decoder = torch.nn.Linear(64, n), torch.nn.Linear(n, 64)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    for _ in range(300):
        x = digits[torch.randint(0, len(digits), (256,))]
        h = encoder(x)
        winners = h.topk(k, dim=1).indices
        code = torch.zeros_like(h).scatter(1, winners, h.gather(1, winners))
        loss = (decoder(code) - x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return encoder(digits[torch.arange(batch) % len(digits)]).contiguous()


def rows_of(kind: str, batch: int, n: int, k: int) -> torch.Tensor:
    if kind == "trained":
        return trained_rows(batch, n, k)
    x = torch.randn(batch, n)
    if kind == "scales":
        x = x * torch.exp(torch.empty(batch, 1).uniform_(-4.6, 4.6)) + 3 * torch.randn(batch, 1)
    return x


def buffers(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the kernel writes: the output, the gradient bits, the win counts."""
    rows, n = x.shape
    return torch.empty_like(x), torch.empty(rows, (n + 7) // 8, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64)


def caller(
    lib: ctypes.CDLL,
    x: torch.Tensor,
    k: int,
    boost: torch.Tensor | None,
    threads: int,
    written: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> Callable[[], None]:
    """A call of ``lib``'s row kernel on ``x`` as a layer's step makes it, writing into ``written``."""
    rows, n = x.shape
    out, bits, counts = written
    z, z_low = _normal_quantiles(k, n)
    pointers = (x.data_ptr(), None if boost is None else boost.data_ptr(), 0, None, out.data_ptr(), bits.data_ptr())

    def call() -> None:
        counts.zero_()
        if lib.ksparse_select_rows(*pointers, 0, counts.data_ptr(), rows, n, k, z, z_low, threads):
            raise MemoryError("the row kernel could not allocate its buffers")

    return call


def median_us(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the git revision to time this checkout's kernels against")
    parser.add_argument("--rows", nargs="+", choices=["normal", "scales", "trained"], default=["normal", "trained"])
    parser.add_argument("--boost", action="store_true", help="boosted scores, as KWinners selects (factors 0.5-1.5)")
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    for name in ("rounds", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, but got {getattr(args, name)}")
    torch.manual_seed(0)
    width = _widest_allowed()
    with tempfile.TemporaryDirectory() as folder:
        libs = {"base": build_at(args.base, Path(folder)), "this": library()}
        used = {name: KERNEL_WIDTHS[lib.ksparse_init(KERNEL_WIDTHS.index(width))] for name, lib in libs.items()}
        print(f"{args.base} against this checkout, {args.threads} threads, kernels {used}, boost {args.boost}\n")
        print("| rows | B x n, active | base us | this us | this / base (median) | range over rounds |")
        print("|---|---|---|---|---|---|")
        for kind in args.rows:
            for batch, n, p in SHAPES:
                k = round(n * p)
                x = rows_of(kind, batch, n, k)
                boost = torch.rand(n) + 0.5 if args.boost else None
                outputs = {name: buffers(x) for name in libs}
                for name, lib in libs.items():
                    caller(lib, x, k, boost, args.threads, outputs[name])()
                if not all(torch.equal(a, b) for a, b in zip(outputs["base"], outputs["this"], strict=True)):
                    raise SystemExit(f"{kind} rows, {batch} x {n}: the two builds' outputs differ")
                # Both write into the same buffers while timed: in a C harness, separate ones favoured one build.
                calls = {name: caller(lib, x, k, boost, args.threads, outputs["base"]) for name, lib in libs.items()}
                times: dict[str, list[float]] = {"base": [], "this": []}
                for round_ in range(args.rounds):
                    for name in ("base", "this") if round_ % 2 == 0 else ("this", "base"):
                        times[name].append(median_us(calls[name], args.repeats))
                ratios = [t / b for t, b in zip(times["this"], times["base"], strict=True)]
                print(
                    f"| {kind} | {batch} x {n}, {p:.0%} | {statistics.median(times['base']):.1f} | "
                    f"{statistics.median(times['this']):.1f} | {statistics.median(ratios):.3f} | "
                    f"{min(ratios):.2f}-{max(ratios):.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
