"""The one timing rule of the benchmarks: the median wall time of repeated calls, after warm-up calls."""

from __future__ import annotations

import time
from collections.abc import Callable


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3
