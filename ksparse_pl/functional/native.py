"""The compiled CPU kernels (``csrc/*.c``): built with the system C compiler on first use, loaded with ctypes.

The shared library is cached in ``$KSPARSE_PL_CACHE`` (default ``$XDG_CACHE_HOME/ksparse_pl`` or
``~/.cache/ksparse_pl``), keyed by the sources and the compiler, so a machine compiles it once (about a
second); a build unused for ``UNUSED_BUILD_DAYS`` (an earlier version's) is deleted when another is made.
Without a working compiler, or with ``KSPARSE_PL_NATIVE=0``, everything warns once and uses torch's own
operations: the same results, except which of several tied scores win a top-k selection. The row kernels use
AVX-512 or AVX2 where the CPU has them; ``KSPARSE_PL_CPU_KERNELS`` (``portable``, ``avx2`` or ``avx512``) caps
that, with the same results.
:mod:`~ksparse_pl.functional.native_topk` (rows and channels), :mod:`~ksparse_pl.functional.native_rows`,
:mod:`~ksparse_pl.functional.native_history` and :mod:`~ksparse_pl.functional.native_duty_cycle` wrap the
kernels.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

_CSRC = Path(__file__).with_name("csrc")
_SOURCES = [
    _CSRC / name for name in ("topk_rows.c", "topk_channels.c", "sparse_rows.c", "selection_history.c", "duty_cycle.c")
]
_HEADERS = [_CSRC / "threads.h"]
# No fused multiply-adds where the C says a * b + c: the duty cycles and sensitivity factors repeat torch's float32
# operations one by one, to the bit. GCC fuses by default and clang does within an expression (on ARM, where every
# CPU has FMA), and clang ignores the per-function optimize attribute that used to say this.
_FLAGS = ["-O3", "-shared", "-fPIC", "-ffp-contract=off"]
# OpenMP, when the compiler has it: the library then shares torch's OpenMP runtime and thread pool.
_PARALLEL_FLAGS = ["-fopenmp"]
#: The instruction sets of the row kernels, narrowest first: ``$KSPARSE_PL_CPU_KERNELS`` (default the last) and
#: :func:`use_widest_kernels` name the widest to use where the CPU has it.
KERNEL_WIDTHS = ("portable", "avx2", "avx512")
#: Days after its last use that a cached build of other sources is deleted, when a new one is built.
UNUSED_BUILD_DAYS = 30


def native_enabled() -> bool:
    """Whether the compiled kernels are available (built on the first call; warns once if they cannot be)."""
    return _library() is not None


def native_serves(*values: Tensor, indices: Tensor | None = None) -> bool:
    """Whether the kernels serve these tensors: float32 ``values`` and int64 ``indices``, all on the CPU,
    outside ``torch.compile`` tracing."""
    # is_cpu rather than device.type: this runs several times per layer step, and building a device costs.
    return (
        all(t.dtype == torch.float32 and t.is_cpu for t in values)
        and (indices is None or (indices.dtype == torch.int64 and indices.is_cpu))
        and not torch.compiler.is_compiling()
        and native_enabled()
    )


def library() -> ctypes.CDLL:
    """The loaded kernels; raises if :func:`native_enabled` is False."""
    lib = _library()
    if lib is None:
        raise RuntimeError("ksparse_pl's native kernels are not available; check native_enabled() first")
    return lib


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("KSPARSE_PL_NATIVE", "1") == "0":
        return None
    widest = _widest_allowed()
    try:
        lib = ctypes.CDLL(str(_build()))
    except (OSError, subprocess.SubprocessError) as err:
        detail = err.stderr.decode(errors="replace").strip() if isinstance(err, subprocess.CalledProcessError) else ""
        warnings.warn(
            f"ksparse_pl could not build its CPU kernels ({err}{': ' + detail if detail else ''}); the sparse "
            "layers and autoencoders use torch's operations instead, which are several times slower on CPU. "
            "Install a C compiler (or set CC), or set KSPARSE_PL_NATIVE=0 to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    pointer, i64, flag, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.ksparse_select_rows.argtypes = [
        pointer,  # x
        pointer,  # boost
        flag,  # by_magnitude
        pointer,  # indices
        pointer,  # dst
        pointer,  # bits
        flag,  # relu
        pointer,  # counts
        i64,  # rows
        i64,  # n
        i64,  # k
        f32,  # z
        f32,  # z_low
        ctypes.c_int,  # threads
    ]
    # the same, then (duty_cycle, selection_count, samples_seen, period)
    adding_wins = lib.ksparse_select_rows_adding_wins
    adding_wins.argtypes = [*lib.ksparse_select_rows.argtypes, pointer, pointer, pointer, i64]
    # (src, indices, relu, dst, bits, rows, n, k, threads)
    lib.ksparse_take_rows.argtypes = [pointer, pointer, flag, pointer, pointer, i64, i64, i64, ctypes.c_int]
    # (x, boost, by_magnitude, dst, bits, relu, counts, rows, n, k, z, z_low, threads)
    keep = lib.ksparse_keep_at_least_rows
    keep.argtypes = [pointer, pointer, flag, pointer, pointer, flag, pointer, i64, i64, i64, f32, f32, ctypes.c_int]
    # (x, boost, by_magnitude, relu, out, indices, bits, counts, per_sample, batch, channels, positions, k,
    #  vectorized, threads)
    lib.ksparse_select_channels.argtypes = [pointer, pointer, flag, flag, *[pointer] * 4, flag, *[i64] * 4, flag, flag]
    # the same without indices and per_sample
    lib.ksparse_keep_at_least_channels.argtypes = [pointer, pointer, flag, flag, *[pointer] * 3, *[i64] * 4, flag, flag]
    # (grad, indices, factors, batch, channels, positions, k, threads)
    lib.ksparse_scale_channel_winners.argtypes = [pointer, pointer, pointer, *[i64] * 4, flag]
    # (src, bits, factors, groups, dst, rows, n, threads)
    lib.ksparse_take_bits_rows.argtypes = [pointer, pointer, pointer, i64, pointer, i64, i64, ctypes.c_int]
    lib.ksparse_take_bits_rows.restype = None
    # (src, bits, indices, factors, dst, rows, n, k, threads)
    lib.ksparse_take_bits_rows_at.argtypes = [*[pointer] * 5, i64, i64, i64, ctypes.c_int]
    # (matrix or source, indices, coefficients or source, out, batch, k, m, d, threads)
    for name in ("ksparse_gather_rows", "ksparse_dot_rows", "ksparse_scatter_rows"):
        getattr(lib, name).argtypes = [pointer, pointer, pointer, pointer, i64, i64, i64, i64, ctypes.c_int]
    # (samples, units, pairs, n, previous)
    lib.ksparse_previous_selection.argtypes = [pointer, pointer, i64, i64, pointer]
    # (samples, units, previous, pairs, sensitivity, n, decay, batch, s_max, factors)
    factors = lib.ksparse_sensitivity_factors
    factors.argtypes = [pointer, pointer, pointer, i64, pointer, i64, pointer, i64, f32, pointer]
    # (samples, units, pairs, sensitivity, n, decay, batch, s_max, factors, after, threads)
    step = lib.ksparse_sensitivity_step
    step.argtypes = [pointer, pointer, i64, pointer, i64, pointer, i64, f32, pointer, pointer, ctypes.c_int]
    # (duty_cycle, selection_count, samples_seen, counts, n, batch, positions, period)
    lib.ksparse_add_wins.argtypes = [pointer, pointer, pointer, pointer, i64, i64, i64, i64]
    lib.ksparse_add_wins.restype = None
    lib.ksparse_init.argtypes = [ctypes.c_int]
    lib.ksparse_init(KERNEL_WIDTHS.index(widest))
    return lib


def use_widest_kernels(widest: str) -> str:
    """Run the row kernels of at most the instruction set ``widest`` (one of :data:`KERNEL_WIDTHS`) from now on,
    in this process, and return the one in use: narrower where the CPU lacks it. For tests and comparisons;
    ``$KSPARSE_PL_CPU_KERNELS`` sets it for a whole run."""
    if widest not in KERNEL_WIDTHS:
        raise ValueError(f"use_widest_kernels: expected `widest` in {KERNEL_WIDTHS}, but got {widest!r}.")
    return KERNEL_WIDTHS[library().ksparse_init(KERNEL_WIDTHS.index(widest))]


def _widest_allowed() -> str:
    widest = os.environ.get("KSPARSE_PL_CPU_KERNELS", KERNEL_WIDTHS[-1])
    if widest not in KERNEL_WIDTHS:
        raise ValueError(f"KSPARSE_PL_CPU_KERNELS: expected one of {KERNEL_WIDTHS}, but got {widest!r}.")
    return widest


def _build() -> Path:
    """The compiled library from the cache, built first if these sources and compiler have not been yet.

    With OpenMP if the compiler supports it, else single-threaded.
    """
    try:
        return _build_with([*_FLAGS, *_PARALLEL_FLAGS])
    except subprocess.CalledProcessError:
        return _build_with(_FLAGS)


def _build_with(flags: list[str]) -> Path:
    compiler = os.environ.get("CC", "cc")
    texts = [path.read_text() for path in (*_SOURCES, *_HEADERS)]
    identity = [*texts, compiler, *flags, platform.system(), platform.machine()]
    tag = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:16]
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = Path(os.environ.get("KSPARSE_PL_CACHE") or user_cache / "ksparse_pl")
    target = cache / f"kernels-{tag}.so"
    if target.exists():
        with contextlib.suppress(OSError):  # its date becomes its last use, for _remove_unused_builds
            os.utime(target)
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # Build in a private folder and rename: several processes (DDP ranks) may build at once.
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        built = Path(tmp) / target.name
        subprocess.run(
            [compiler, *flags, "-o", str(built), *map(str, _SOURCES), "-lm"],
            check=True,
            capture_output=True,
            timeout=300,
        )
        os.replace(built, target)
    _remove_unused_builds(cache, target)
    return target


def _remove_unused_builds(cache: Path, keep: Path) -> None:
    """Delete the builds unused for ``UNUSED_BUILD_DAYS``: every version of the package (every edit of the
    sources) leaves one, and another Python environment may still use a recent one."""
    cutoff = time.time() - UNUSED_BUILD_DAYS * 86400
    for old in cache.glob("kernels-*.so"):
        with contextlib.suppress(OSError):  # removed by another process meanwhile
            if old != keep and old.stat().st_mtime < cutoff:
                old.unlink()
