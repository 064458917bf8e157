"""The kernels built for 64-bit ARM, run under qemu, give the same bits as on this machine.

ARM CPUs run the portable kernels (GCC/clang vector types, NEON there), which x86 machines only test at
``KSPARSE_PL_CPU_KERNELS=portable`` through SSE2. ``kernel_outputs.c`` hashes every kernel's output on fixed
inputs; the hashes of an aarch64 build must equal those of this machine's build at each instruction set. Needs
qemu-user (``qemu-aarch64`` or ``qemu-aarch64-static`` on ``PATH``, e.g. from Debian's ``qemu-user-static``) and
an aarch64 compiler (``aarch64-linux-gnu-gcc``, or zig's clang: ``pip install ziglang``); skipped without them.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ksparse_pl.functional.native import _CSRC, _FLAGS, KERNEL_WIDTHS

HARNESS = Path(__file__).with_name("kernel_outputs.c")
# The library's flags for an executable instead of a shared library, without OpenMP (qemu runs one thread).
EXECUTABLE_FLAGS = [flag for flag in _FLAGS if flag not in ("-shared", "-fPIC")]


def arm_compiler() -> list[str] | None:
    if shutil.which("aarch64-linux-gnu-gcc"):
        return ["aarch64-linux-gnu-gcc", "-static"]
    if importlib.util.find_spec("ziglang") is not None:
        return [sys.executable, "-m", "ziglang", "cc", "-target", "aarch64-linux-musl", "-static"]
    return None


def qemu() -> str | None:
    return shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")


def build(compiler: list[str], target: Path) -> Path:
    sources = sorted(map(str, _CSRC.glob("*.c")))
    command = [*compiler, *EXECUTABLE_FLAGS, f"-I{_CSRC}", "-o", str(target), str(HARNESS), *sources, "-lm"]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return target


def hashes(command: list[str]) -> list[str]:
    """The harness's output hashes, without its first line (the instruction set it used)."""
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=600).stdout.splitlines()[1:]


@pytest.mark.skipif(arm_compiler() is None or qemu() is None, reason="needs qemu-aarch64 and an aarch64 C compiler")
def test_an_arm_build_gives_the_same_bits_as_every_instruction_set_here(tmp_path) -> None:
    arm = build(arm_compiler(), tmp_path / "kernel_outputs_arm")
    arm_hashes = hashes([qemu(), str(arm)])
    assert len(arm_hashes) > 400  # every kernel and case reported
    host = build([os.environ.get("CC", "cc")], tmp_path / "kernel_outputs_host")
    for width in range(len(KERNEL_WIDTHS)):
        assert hashes([str(host), str(width)]) == arm_hashes, f"{platform.machine()} at {KERNEL_WIDTHS[width]}"
