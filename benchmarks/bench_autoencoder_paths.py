"""SparseAutoencoder's training step with ``sparse_path`` off and on, side by side in one process.

    python benchmarks/bench_autoencoder_paths.py
    python benchmarks/bench_autoencoder_paths.py --device cuda   # on a GPU (each step timed until it has finished)

One step = ``training_step`` (loss, layer state), backward and an Adam step, on a fixed batch; the two
paths take turns over ``--rounds`` rounds and the ratio is the median of the rounds' ratios. The shapes
run from the quickstart's to a wide code; where the sparse path starts to win sets ``SPARSE_PATH_MIN_WEIGHTS``
(the code layer's weight count from which ``sparse_path=None`` takes it on a CPU; ``SPARSE_PATH_MIN_WEIGHTS_GPU``
on a GPU). The last column is the path the default takes on the device.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from _timing import describe, interleaved_ms, median_ratio

from ksparse_pl.models import SparseAutoencoder

# (input_dim, hidden_dim, k, batch)
SHAPES = [(64, 256, 16, 64), (64, 1024, 32, 64), (768, 512, 32, 256), (784, 1000, 25, 128), (768, 4096, 32, 256)]


def training_step(
    input_dim: int, hidden_dim: int, k: int, batch: int, sparse_path: bool, device: torch.device
) -> Callable[[], None]:
    torch.manual_seed(0)
    model = SparseAutoencoder(input_dim, hidden_dim, k=k, sparse_path=sparse_path).to(device)
    model.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, input_dim, device=device)

    def step() -> None:
        optimizer.zero_grad()
        model.training_step(x, 0).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"), help="cpu or cuda")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {describe(args.device)}")
    print("| input_dim x hidden_dim | k | batch | dense path ms | sparse path ms | dense / sparse | default |")
    print("|---|---|---|---|---|---|---|")
    for input_dim, hidden_dim, k, batch in SHAPES:
        steps = {
            path: training_step(input_dim, hidden_dim, k, batch, path == "sparse", args.device)
            for path in ("dense", "sparse")
        }
        times = interleaved_ms(steps, args.rounds, args.repeats, args.device)
        dense, sparse = statistics.median(times["dense"]), statistics.median(times["sparse"])
        default = "sparse" if SparseAutoencoder(input_dim, hidden_dim, k=k).trains_sparse(args.device) else "dense"
        print(
            f"| {input_dim} x {hidden_dim} | {k} | {batch} | {dense:.2f} | {sparse:.2f} | "
            f"{median_ratio(times, 'dense', 'sparse'):.2f} | "
            f"{default} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
