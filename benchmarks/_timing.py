"""The timing rules of the benchmarks: medians of repeated calls, and ratios taken in interleaved rounds."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Mapping

import torch


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What waits for ``device`` to finish the work queued on it: CUDA runs it after the call returns."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 5, device: torch.device | None = None) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls.

    On a GPU each call is timed from its start until the device has finished its work (launches included).
    """
    sync = synchronizer(device or torch.device("cpu"))
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def interleaved_ms(
    fns: Mapping[str, Callable[[], object]], rounds: int, repeats: int, device: torch.device | None = None
) -> dict[str, list[float]]:
    """Per round, the median milliseconds of ``repeats`` calls of every function, the functions one after another.

    On a shared machine the speed drifts over seconds; ratios taken within a round compare the functions
    under the same conditions, and their median over the rounds is what the benchmarks report.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(median_ms(fn, repeats, warmup=2, device=device))
    return times


def describe(device: torch.device) -> str:
    """The processor or GPU the benchmark runs on, for its header."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def median_ratio(times: dict[str, list[float]], name: str, baseline: str) -> float:
    """The median over rounds of ``name``'s time over ``baseline``'s (from :func:`interleaved_ms`)."""
    return statistics.median(t / b for t, b in zip(times[name], times[baseline], strict=True))
