"""A full training step of a wide top-k autoencoder: sparse decode + sparse encoder backward vs dense.

    python benchmarks/bench_sparse_autoencoder.py               # d=768, k=32, B=256, M in 4096, 16384, 65536
    python benchmarks/bench_sparse_autoencoder.py --sizes 4096 --repeats 10

Step = forward, MSE loss, backward, Adam step, all parameters (encoder and decoder, M x d each) updated
densely by the same optimizer in both paths. Floor = one dense encoder-forward matmul plus one Adam step,
each timed alone. Everything side by side in one process; medians.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ksparse_pl.functional import keep_winners, sparse_decode, topk_encode


def median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def make_params(m: int, d: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w_enc = torch.randn(m, d, generator=g) / d**0.5
    return [
        w_enc.requires_grad_(),
        torch.zeros(m, requires_grad=True),
        w_enc.detach().clone().requires_grad_(),
        torch.zeros(d, requires_grad=True),
    ]


def dense_forward(x, w_enc, b_enc, rows, b_dec, k):
    pre = F.linear(x, w_enc, b_enc)
    code = keep_winners(pre, pre.detach().topk(k, dim=1).indices, relu=True)  # the dense (B, M) code
    return F.linear(code, rows.t(), b_dec)


def sparse_forward(x, w_enc, b_enc, rows, b_dec, k):
    values, indices = topk_encode(x, w_enc, b_enc, k, relu=True)
    return sparse_decode(values, indices, rows, b_dec)


def train_step(forward, params, optimizer, x, k) -> Callable[[], None]:
    def run() -> None:
        optimizer.zero_grad(set_to_none=False)
        F.mse_loss(forward(x, *params, k), x).backward()
        optimizer.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads; "
        f"d={args.d}, k={args.k}, B={args.batch}"
    )
    print("| M | floor ms | sparse step ms | dense step ms | sparse / floor | dense / sparse |")
    print("|---|---|---|---|---|---|")
    x = torch.randn(args.batch, args.d, generator=torch.Generator().manual_seed(1))
    for m in args.sizes:
        timings = {}
        for name, forward in (("sparse", sparse_forward), ("dense", dense_forward)):
            params = make_params(m, args.d)
            optimizer = torch.optim.Adam(params, lr=1e-4)
            timings[name] = median_s(train_step(forward, params, optimizer, x, args.k), args.repeats)
        params = make_params(m, args.d)
        optimizer = torch.optim.Adam(params, lr=1e-4)
        F.mse_loss(sparse_forward(x, *params, args.k), x).backward()  # grads in place for the optimizer step
        with torch.no_grad():
            matmul = median_s(lambda: F.linear(x, params[0], params[1]), args.repeats)  # noqa: B023
        update = median_s(optimizer.step, args.repeats)
        floor = matmul + update
        print(
            f"| {m} | {floor * 1e3:.1f} | {timings['sparse'] * 1e3:.1f} | {timings['dense'] * 1e3:.1f} | "
            f"{timings['sparse'] / floor:.2f} | {timings['dense'] / timings['sparse']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
