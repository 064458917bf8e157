"""Forward+backward cost of the k-sparse layers relative to ReLU, side by side in one process.

    python benchmarks/bench_activations.py                      # the three default shapes
    python benchmarks/bench_activations.py --keep-freed-memory  # as the ksparse-pl command runs
    python benchmarks/bench_activations.py --rounds 30 --threads 2
    python benchmarks/bench_activations.py --keep-freed-memory --tables conv  # only the feature-map table
    python benchmarks/bench_activations.py --device cuda        # on a GPU

Each case is forward + backward on a fixed input. The cases take turns: ``--rounds`` rounds, each timing
every case as the median of ``--repeats`` runs; a case's ratio to ReLU is the median over the rounds of
its ratio within the round (this machine's speed drifts by a third over seconds), its time the median
over rounds. "in Linear block" adds a Linear(n, n) layer in front of both, the way these activations are
used. Two baselines the layers are measured against in the literature take part too: plain
``torch.topk`` followed by a scatter, and Numenta's ``kthvalue`` threshold with a masked fill (nupic.torch's
``kwinners``). The bytes autograd keeps for backward are counted with saved-tensor hooks.
``--keep-freed-memory`` calls :func:`ksparse_pl.allocator.keep_freed_memory` first: with glibc's defaults a
case's 4 MiB tensors are sometimes handed back to the system and page-faulted in again on every call,
depending on what ran before (in a short run without the flag ReLU took 3.4 ms at the first shape, about
0.5 ms with it). A second table times the selection alone: ``topk_indices`` (the compiled kernel on CPU
float32) against ``torch.topk``, on normal scores and on ReLU'd ones (half of them tied at 0). Between
them, a table of forward and backward timed apart at the first shape, for ReLU, ``k_sparse`` and ``KSparse``.
The next gives the fixed cost per call (Python, autograd, state bookkeeping): one row of 64 units. The last
times ``KSparse2d`` / ``KWinners2d`` on (B, C, H, W) feature maps, with ``torch.topk`` over the channels then a
scatter as the baseline. ``--tables widths`` compares the row kernels' instruction sets that the CPU runs.

``--processes N`` runs the same command in N fresh processes, one after another, then gives each "x ReLU" ratio of
the layer and feature-map tables as the median and range over them: on a shared VM a process's ReLU can take
twice another's at the same shape (memory placement), which moves every ratio of that process with it.

``--device cuda`` runs the layer, phase, fixed-cost and feature-map tables on a GPU, where the layers use torch's
operations: each call is timed until the GPU has finished it, so a time there is mostly the launches of its kernels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _timing import describe, interleaved_ms, median_ratio, synchronizer
from torch import nn

from ksparse_pl import KSparse, KSparse2d, KWinners, KWinners2d
from ksparse_pl.allocator import keep_freed_memory
from ksparse_pl.functional import k_sparse, topk_indices
from ksparse_pl.functional.native import KERNEL_WIDTHS, use_widest_kernels
from ksparse_pl.functional.native_topk import select_rows, take_bits_rows

SHAPES = [(256, 4096, 0.05), (256, 1024, 0.10), (1024, 512, 0.25)]
# A conv layer's feature maps: MNIST-sized 32 channels after a 5x5 conv, and 64 channels further in.
CONV_SHAPES = [((64, 32, 24, 24), 4), ((64, 64, 8, 8), 8)]
# The "x ReLU" ratios of this process's layer and feature-map tables, by "shape | case", for --processes.
RATIOS: dict[str, float] = {}


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward, each storage counted once; the input is the caller's anyway."""
    sizes = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() != x.data_ptr():
            sizes[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(sizes.values())


class KSparseFunction(nn.Module):
    """``functional.k_sparse``: the selection and sparse output without a layer's training statistics."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return k_sparse(x, self.k)


class TopkThenScatter(nn.Module):
    """The plain baseline: ``torch.topk``, then the winners scattered into zeros."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices = x.detach().topk(self.k, dim=-1, sorted=False).indices
        return torch.zeros_like(x).scatter(-1, indices, x.gather(-1, indices))


class KthvalueThreshold(nn.Module):
    """Numenta's baseline (nupic.torch ``kwinners``): zero what lies below the k-th largest value."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        threshold = x.detach().kthvalue(x.shape[-1] - self.k + 1, dim=-1, keepdim=True).values
        return x.masked_fill(x.detach() < threshold, 0)


def cases(n: int, p: float) -> dict[str, nn.Module]:
    k = round(n * p)
    return {
        "ReLU": nn.ReLU(),
        "baseline: torch.topk + scatter": TopkThenScatter(k),
        "baseline: kthvalue threshold (nupic.torch)": KthvalueThreshold(k),
        "k_sparse (function, no state)": KSparseFunction(k),
        "KSparse": KSparse(n, percent_on=p),
        "KSparse threshold_mode": KSparse(n, percent_on=p, threshold_mode=True),
        "KWinners (boosting)": KWinners(n, percent_on=p),
        "KWinners + sensitivity": KWinners(n, percent_on=p, sensitivity=True),
    }


def step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        module(x).backward(grad)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--keep-freed-memory", action="store_true", help="as the ksparse-pl command runs")
    parser.add_argument("--tables", nargs="+", choices=list(TABLES), help="which tables (default: all the device runs)")
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"), help="cpu or cuda")
    parser.add_argument("--processes", type=int, default=1, help="run in N fresh processes, then sum up the ratios")
    parser.add_argument("--ratios-out", type=Path, help=argparse.SUPPRESS)  # a child process's ratios, as JSON
    args = parser.parse_args()
    if args.processes < 1:
        parser.error(f"--processes must be at least 1, but got {args.processes}")
    if args.processes > 1:
        run_processes(args)
        return
    on_gpu = [name for name in TABLES if name not in CPU_ONLY]
    tables = args.tables or (list(TABLES) if args.device.type == "cpu" else on_gpu)
    if args.device.type != "cpu" and set(tables) & CPU_ONLY:
        parser.error(f"--tables {' '.join(sorted(set(tables) & CPU_ONLY))} time CPU kernels; on a GPU: {on_gpu}")
    if args.keep_freed_memory:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {describe(args.device)}, "
        f"freed memory {'kept' if args.keep_freed_memory else 'returned (glibc defaults)'}"
    )
    for name in tables:
        TABLES[name](args.rounds, args.repeats, args.device)
    if args.ratios_out:
        args.ratios_out.write_text(json.dumps(RATIOS))


def run_processes(args: argparse.Namespace) -> None:
    """This command in ``args.processes`` fresh processes, one after another, then each "x ReLU" ratio's median
    and range over them."""
    command = [sys.executable, __file__, "--rounds", str(args.rounds), "--repeats", str(args.repeats)]
    command += ["--threads", str(args.threads), "--device", str(args.device)]
    command += ["--keep-freed-memory"] * args.keep_freed_memory + (["--tables", *args.tables] if args.tables else [])
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for process in range(args.processes):
            print(f"\n## process {process + 1} of {args.processes}", flush=True)
            written = Path(folder) / f"{process}.json"
            subprocess.run([*command, "--ratios-out", str(written)], check=True)
            runs.append(json.loads(written.read_text()))
    if not runs[0]:  # tables without an "x ReLU" column
        return
    print(f"\n## x ReLU over the {args.processes} processes")
    print()
    print("| shape | layer | median | range | each process |")
    print("|---|---|---|---|---|")
    for key in runs[0]:
        ratios = [run[key] for run in runs]
        shape, name = key.split(" | ")
        each = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"| {shape} | {name} | {statistics.median(ratios):.2f} | {min(ratios):.2f}-{max(ratios):.2f} | {each} |")


def layer_table(rounds: int, repeats: int, device: torch.device) -> None:
    """Every layer and baseline against ReLU at each shape, alone and behind a Linear layer."""
    print()
    print("| B | n | active | layer | fwd+bwd ms | x ReLU | in Linear block, x ReLU | saved for backward |")
    print("|---|---|---|---|---|---|---|---|")
    for batch, n, p in SHAPES:
        x = torch.randn(batch, n, device=device, requires_grad=True)
        grad = torch.randn(batch, n, device=device)
        linear = nn.Linear(n, n, device=device)
        layers = {name: m.to(device) for name, m in cases(n, p).items()}
        alone = interleaved_ms({name: step(m, x, grad) for name, m in layers.items()}, rounds, repeats, device)
        # A Linear(4096, 4096) step takes ~0.15 s on a CPU: fewer repeats per round for the block.
        blocks = {name: step(nn.Sequential(linear, m), x, grad) for name, m in layers.items()}
        block = interleaved_ms(blocks, rounds, max(repeats // 10, 2), device)
        relu_saved = saved_bytes(layers["ReLU"], x)
        for name, m in layers.items():
            kb = saved_bytes(m, x) / 1024
            ratio = RATIOS[f"{batch} x {n}, {p:.0%} | {name}"] = median_ratio(alone, name, "ReLU")
            print(
                f"| {batch} | {n} | {p:.0%} | {name} | {statistics.median(alone[name]):.3f} | "
                f"{ratio:.2f} | {median_ratio(block, name, 'ReLU'):.2f} | "
                f"{kb:.0f} KiB (ReLU {relu_saved / 1024:.0f}) |"
            )


def phases_ms(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median milliseconds of the forward and of the backward of ``module`` on ``x``, timed apart."""
    sync = synchronizer(x.device)
    forward, backward = [], []
    for _ in range(repeats):
        x.grad = None
        sync()
        start = time.perf_counter()
        out = module(x)
        sync()
        middle = time.perf_counter()
        out.backward(grad)
        sync()
        forward.append(middle - start)
        backward.append(time.perf_counter() - middle)
    return statistics.median(forward) * 1e3, statistics.median(backward) * 1e3


def phase_table(rounds: int, repeats: int, device: torch.device) -> None:
    """Forward and backward apart at the first shape: where a layer's time goes against ReLU's."""
    batch, n, p = SHAPES[0]
    x, grad = torch.randn(batch, n, device=device, requires_grad=True), torch.randn(batch, n, device=device)
    wanted = ("ReLU", "k_sparse (function, no state)", "KSparse")
    layers = {name: m.to(device) for name, m in cases(n, p).items() if name in wanted}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in layers}
    for _ in range(rounds):
        for name, module in layers.items():
            phases_ms(module, x, grad, 2)  # warm-up
            times[name].append(phases_ms(module, x, grad, repeats))
    print()
    print("| B | n | active | layer | forward ms | backward ms |")
    print("|---|---|---|---|---|---|")
    for name, pairs in times.items():
        forward, backward = (statistics.median(phase) for phase in zip(*pairs, strict=True))
        print(f"| {batch} | {n} | {p:.0%} | {name} | {forward:.3f} | {backward:.3f} |")


def selection_table(rounds: int, repeats: int, device: torch.device) -> None:
    print()
    print("| B | n | k | scores | topk_indices ms | torch.topk ms | torch.topk / topk_indices |")
    print("|---|---|---|---|---|---|---|")
    for batch, n, p in SHAPES:
        k = round(n * p)
        normal = torch.randn(batch, n)
        for name, scores in (("normal", normal), ("ReLU'd", normal.relu())):
            times = interleaved_ms(
                {
                    "ours": lambda: topk_indices(scores, k),  # noqa: B023
                    "torch": lambda: scores.topk(k, sorted=False),  # noqa: B023
                },
                rounds,
                repeats,
            )
            ours, theirs = statistics.median(times["ours"]), statistics.median(times["torch"])
            print(
                f"| {batch} | {n} | {k} | {name} | {ours:.3f} | {theirs:.3f} | "
                f"{median_ratio(times, 'torch', 'ours'):.1f} |"
            )


def overhead_table(
    rounds: int, repeats: int, device: torch.device, n: int = 64, p: float = 1 / 16, calls: int = 50
) -> None:
    """The fixed cost per call: forward + backward of one row of ``n`` units, where the arithmetic is negligible.

    ``calls`` calls per timing: one call is tens of microseconds, near the clock's resolution on this VM.
    """
    x, grad = torch.randn(1, n, device=device, requires_grad=True), torch.randn(1, n, device=device)
    layers = {name: m.to(device) for name, m in cases(n, p).items() if "baseline" not in name}
    runs = {name: step_times(step(m, x, grad), calls) for name, m in layers.items()}
    times = interleaved_ms(runs, rounds, repeats, device)
    print()
    print("| B | n | k | layer | fwd+bwd us per call | minus ReLU's, us |")
    print("|---|---|---|---|---|---|")
    relu = statistics.median(times["ReLU"]) * 1e3 / calls
    for name in layers:
        us = statistics.median(times[name]) * 1e3 / calls
        print(f"| 1 | {n} | {round(n * p)} | {name} | {us:.0f} | {us - relu:.0f} |")


def widths_table(rounds: int, repeats: int, device: torch.device) -> None:
    """The row kernels of each instruction set this CPU runs (portable, AVX2, AVX-512), taking turns: the selection
    with boosting and output, the backward's masking, and ``KWinners`` forward+backward."""
    widths = [w for w in KERNEL_WIDTHS if use_widest_kernels(w) == w]
    print()
    columns = [f"{w} ms" for w in widths] + [f"{w} / avx2" for w in widths]
    print(f"| B | n | k | case | {' | '.join(columns)} |")
    print(f"|---|---|---|---|{'---|' * len(columns)}")
    for batch, n, p in SHAPES:
        k = round(n * p)
        x, grad, boost = torch.randn(batch, n, requires_grad=True), torch.randn(batch, n), torch.rand(n) + 0.5
        bits = select_rows(x.detach(), k, output=True).bits
        assert bits is not None  # written with the output
        layer = KWinners(n, k)
        kernels: dict[str, Callable[[], object]] = {
            "select_rows, boosted, output": lambda: select_rows(x.detach(), k, boost=boost, output=True, counts=True),  # noqa: B023
            "take_bits_rows": lambda: take_bits_rows(grad, bits),  # noqa: B023
            "KWinners fwd+bwd": step(layer, x, grad),
        }
        for name, run in kernels.items():
            times = interleaved_ms({w: width_run(w, run) for w in widths}, rounds, repeats)
            ms = " | ".join(f"{statistics.median(times[w]):.3f}" for w in widths)
            ratios = " | ".join(f"{median_ratio(times, w, 'avx2'):.2f}" if "avx2" in times else "-" for w in widths)
            print(f"| {batch} | {n} | {k} | {name} | {ms} | {ratios} |")
    use_widest_kernels(KERNEL_WIDTHS[-1])


def width_run(width: str, run: Callable[[], object]) -> Callable[[], None]:
    """``run`` on the row kernels of ``width`` (switching costs a ctypes call, about a microsecond)."""

    def on_width() -> None:
        use_widest_kernels(width)
        run()

    return on_width


def step_times(run: Callable[[], None], calls: int) -> Callable[[], None]:
    """``run`` called ``calls`` times in a row, as one function to time."""

    def repeated() -> None:
        for _ in range(calls):
            run()

    return repeated


class TopkChannelsThenScatter(nn.Module):
    """The plain baseline on feature maps: ``torch.topk`` over the channels at every position, then a scatter."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices = x.detach().topk(self.k, dim=1, sorted=False).indices
        return torch.zeros_like(x).scatter(1, indices, x.gather(1, indices))


def conv_table(rounds: int, repeats: int, device: torch.device) -> None:
    """``KSparse2d`` / ``KWinners2d`` on (B, C, H, W) feature maps against ReLU: channel mode (the top k channels
    at every position) and global mode (10% of C*H*W)."""
    print()
    print("| B, C, H, W | k | layer | fwd+bwd ms | x ReLU |")
    print("|---|---|---|---|---|")
    for shape, k in CONV_SHAPES:
        x, grad = torch.randn(*shape, device=device, requires_grad=True), torch.randn(*shape, device=device)
        channels, spatial = shape[1], shape[2:]
        layers = {
            "ReLU": nn.ReLU(),
            "baseline: torch.topk over channels + scatter": TopkChannelsThenScatter(k),
            "KSparse2d channel": KSparse2d(channels, k),
            "KSparse2d channel threshold_mode": KSparse2d(channels, k, threshold_mode=True),
            "KWinners2d channel (boosting)": KWinners2d(channels, k),
            "KWinners2d channel + sensitivity": KWinners2d(channels, k, sensitivity=True),
            "KSparse2d global, 10%": KSparse2d(channels, percent_on=0.1, mode="global", spatial_shape=spatial),
        }
        layers = {name: m.to(device) for name, m in layers.items()}
        times = interleaved_ms({name: step(m, x, grad) for name, m in layers.items()}, rounds, repeats, device)
        for name in layers:
            ratio = RATIOS[f"{' x '.join(map(str, shape))}, k = {k} | {name}"] = median_ratio(times, name, "ReLU")
            print(
                f"| {', '.join(map(str, shape))} | {k} | {name} | {statistics.median(times[name]):.3f} | {ratio:.2f} |"
            )


TABLES: dict[str, Callable[[int, int, torch.device], None]] = {
    "layers": layer_table,
    "phases": phase_table,
    "selection": selection_table,
    "overhead": overhead_table,
    "conv": conv_table,
    "widths": widths_table,
}
# The compiled kernels against torch.topk and against each other: on a GPU the layers use torch.topk.
CPU_ONLY = {"selection", "widths"}

if __name__ == "__main__":
    main()
