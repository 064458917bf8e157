"""A full training step of a wide top-k autoencoder: sparse decode + sparse encoder backward vs dense.

    python benchmarks/bench_sparse_autoencoder.py               # d=768, k=32, B=256, M in 4096, 16384, 65536
    python benchmarks/bench_sparse_autoencoder.py --optimizer adam --sizes 16384
    python benchmarks/bench_sparse_autoencoder.py --keep-freed-memory   # as the ksparse-pl command runs
    python benchmarks/bench_sparse_autoencoder.py --device cuda         # on a GPU

Step = forward, MSE loss, backward, optimizer step, all parameters (encoder and decoder, M x d each)
updated densely by the same optimizer in both paths (default: torch's fused CPU Adam; ``adam`` is its
default for-each implementation, about 7x slower at M = 16384 here). Both paths select the winners with
the same ``topk_indices``. Floor = one dense encoder-forward matmul plus one optimizer step, each timed
alone. The steps and the floor's parts take turns over ``--rounds`` rounds (medians of ``--repeats`` calls
each); ratios are medians over the rounds of the ratios within a round. Memory, each path in a fresh
process: the bytes autograd keeps for backward (saved-tensor hooks) and the growth of the peak resident
set over the parameters during three steps (gradients and optimizer state included, equal in both paths); on a
GPU, the growth of the peak memory that torch's CUDA allocator handed out, over the parameters. There each call is
timed until the GPU has finished its work, and the sparse path's row work runs in ``embedding_bag`` and
``index_add_``.

Each step frees and allocates its M x d gradients again; with glibc's defaults those blocks go back to the
operating system and every step page-faults them in. ``--keep-freed-memory`` calls
:func:`ksparse_pl.allocator.keep_freed_memory` first, as the ``ksparse-pl`` command does.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import describe, interleaved_ms, median_ratio

from ksparse_pl.allocator import keep_freed_memory
from ksparse_pl.functional import keep_winners, sparse_decode, topk_encode, topk_indices


def make_params(m: int, d: int, device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w_enc = (torch.randn(m, d, generator=g) / d**0.5).to(device)
    return [
        w_enc.requires_grad_(),
        torch.zeros(m, device=device, requires_grad=True),
        w_enc.detach().clone().requires_grad_(),
        torch.zeros(d, device=device, requires_grad=True),
    ]


def dense_forward(x, w_enc, b_enc, rows, b_dec, k):
    pre = F.linear(x, w_enc, b_enc)
    code = keep_winners(pre, topk_indices(pre.detach(), k), relu=True)  # the dense (B, M) code
    return F.linear(code, rows.t(), b_dec)


def sparse_forward(x, w_enc, b_enc, rows, b_dec, k):
    values, indices = topk_encode(x, w_enc, b_enc, k, relu=True)
    return sparse_decode(values, indices, rows, b_dec)


def train_step(forward, params, optimizer, x, k) -> Callable[[], None]:
    def run() -> None:
        optimizer.zero_grad()  # set_to_none, as Lightning does
        F.mse_loss(forward(x, *params, k), x).backward()
        optimizer.step()

    return run


def encoder_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            F.linear(x, weight, bias)

    return run


def make_optimizer(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-4, fused=name == "adam-fused")


def peak_rss_kib() -> int:
    """This process's peak resident set. Linux's VmHWM starts afresh at exec; ``ru_maxrss`` would carry the
    parent's peak over into the child."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_kib(device: torch.device) -> int:
    """The peak of this process's resident set, or of the memory torch's CUDA allocator handed out on ``device``."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) // 1024
    return peak_rss_kib()


def peak_memory(path: str, m: int, args: argparse.Namespace) -> dict[str, float]:
    """In this (fresh) process: MiB autograd saves for one step's backward, and the peak memory growth over the
    parameters through that forward and 3 training steps."""
    forward = sparse_forward if path == "sparse" else dense_forward
    x = input_batch(args)
    params = make_params(m, args.d, args.device)
    before = peak_kib(args.device)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if all(t.data_ptr() != p.data_ptr() for p in [x, *params]):
            saved[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.mse_loss(forward(x, *params, args.k), x)
    del loss
    step = train_step(forward, params, make_optimizer(args.optimizer, params), x, args.k)
    for _ in range(3):
        step()
    after = peak_kib(args.device)
    return {"saved_mib": sum(saved.values()) / 2**20, "peak_growth_mib": (after - before) / 1024}


def input_batch(args: argparse.Namespace) -> torch.Tensor:
    return torch.randn(args.batch, args.d, generator=torch.Generator().manual_seed(1)).to(args.device)


def memory_in_fresh_process(path: str, m: int) -> dict[str, float]:
    command = [sys.executable, __file__, *sys.argv[1:], "--memory-of", path, "--sizes", str(m)]  # last one wins
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--optimizer", choices=["adam-fused", "adam"], default="adam-fused")
    parser.add_argument("--keep-freed-memory", action="store_true", help="keep freed memory in the process")
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"), help="cpu or cuda")
    parser.add_argument("--memory-of", choices=["sparse", "dense"], help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.keep_freed_memory and not keep_freed_memory():
        parser.error("--keep-freed-memory needs glibc")
    if args.memory_of:
        print(json.dumps(peak_memory(args.memory_of, args.sizes[0], args)))
        return
    print(
        f"torch {torch.__version__}, {describe(args.device)}; "
        f"d={args.d}, k={args.k}, B={args.batch}, optimizer {args.optimizer}, "
        f"{'freed memory kept' if args.keep_freed_memory else 'glibc malloc defaults'}"
    )
    peak = "peak CUDA memory" if args.device.type == "cuda" else "peak RSS"
    print(
        "| M | floor ms | sparse step ms | dense step ms | sparse / floor | dense / sparse | saved for backward, "
        f"sparse / dense MiB | {peak} growth, sparse / dense MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    x = input_batch(args)
    for m in args.sizes:
        steps, floor_parts = {}, {}
        for name, forward in (("sparse", sparse_forward), ("dense", dense_forward)):
            params = make_params(m, args.d, args.device)
            optimizer = make_optimizer(args.optimizer, params)
            steps[name] = train_step(forward, params, optimizer, x, args.k)
            if name == "sparse":  # the floor: this model's encoder matmul, and its optimizer on its gradients
                floor_parts["matmul"] = encoder_matmul(x, params[0], params[1])
                floor_parts["update"] = optimizer.step
        steps["sparse"]()  # gradients in place for the optimizer step alone
        times = interleaved_ms({**steps, **floor_parts}, args.rounds, args.repeats, args.device)
        times["floor"] = [a + b for a, b in zip(times["matmul"], times["update"], strict=True)]
        floor, sparse, dense = (statistics.median(times[name]) for name in ("floor", "sparse", "dense"))
        memory = {path: memory_in_fresh_process(path, m) for path in ("sparse", "dense")}
        print(
            f"| {m} | {floor:.1f} | {sparse:.1f} | {dense:.1f} | "
            f"{median_ratio(times, 'sparse', 'floor'):.2f} | {median_ratio(times, 'dense', 'sparse'):.2f} | "
            f"{memory['sparse']['saved_mib']:.1f} / {memory['dense']['saved_mib']:.1f} | "
            f"{memory['sparse']['peak_growth_mib']:.0f} / {memory['dense']['peak_growth_mib']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
