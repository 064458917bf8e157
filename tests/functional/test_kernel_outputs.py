"""Every kernel's outputs on fixed inputs (``kernel_outputs.c``), built outside Python: under sanitizers, and for ARM.

``kernel_outputs.c`` runs the kernels of ``ksparse_pl/functional/csrc`` on rows, channels, row gathers and scatters,
duty cycles and sensitivity (odd lengths, ties, wide scales, NaN and infinities among the inputs) and prints a hash of
each output; its argument is the widest instruction set to use.

ARM CPUs run the portable kernels (GCC/clang vector types, NEON there), which x86 machines only test at
``KSPARSE_PL_CPU_KERNELS=portable`` through SSE2. The ARM test needs qemu-user (``qemu-aarch64`` or
``qemu-aarch64-static`` on ``PATH``, e.g. from Debian's ``qemu-user-static``) and an aarch64 compiler
(``aarch64-linux-gnu-gcc``, or zig's clang: ``pip install ziglang``); it is skipped without them.
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
SANITIZERS = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


def host_compiler() -> list[str]:
    return [os.environ.get("CC", "cc")]


def arm_compiler() -> list[str] | None:
    if shutil.which("aarch64-linux-gnu-gcc"):
        return ["aarch64-linux-gnu-gcc", "-static"]
    if importlib.util.find_spec("ziglang") is not None:
        return [sys.executable, "-m", "ziglang", "cc", "-target", "aarch64-linux-musl", "-static"]
    return None


def qemu() -> str | None:
    return shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")


def build(compiler: list[str], target: Path, extra: tuple[str, ...] | list[str] = ()) -> Path:
    sources = sorted(map(str, _CSRC.glob("*.c")))
    command = [*compiler, *EXECUTABLE_FLAGS, *extra, f"-I{_CSRC}", "-o", str(target), str(HARNESS), *sources, "-lm"]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return target


def hashes(command: list[str]) -> list[str]:
    """The harness's output hashes, without its first line (the instruction set it used)."""
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]  # a sanitizer's report, say
    return run.stdout.splitlines()[1:]


def sanitizers_available(tmp_path: Path) -> bool:
    """Whether an empty program builds and runs with the sanitizers (their runtime may be missing, or not run here)."""
    program, empty = tmp_path / "empty.c", tmp_path / "empty"
    program.write_text("int main(void) { return 0; }\n")
    command = [*host_compiler(), *SANITIZERS, "-o", str(empty), str(program)]
    if subprocess.run(command, capture_output=True, timeout=120).returncode != 0:
        return False
    return subprocess.run([str(empty)], capture_output=True, timeout=120).returncode == 0


def test_every_instruction_set_runs_clean_under_the_address_and_undefined_behaviour_sanitizers(tmp_path) -> None:
    if not sanitizers_available(tmp_path):
        pytest.skip("no -fsanitize=address,undefined here")
    plain = build(host_compiler(), tmp_path / "kernel_outputs")
    checked = build(host_compiler(), tmp_path / "kernel_outputs_sanitized", SANITIZERS)
    for width in range(len(KERNEL_WIDTHS)):
        assert hashes([str(checked), str(width)]) == hashes([str(plain), str(width)]), KERNEL_WIDTHS[width]


@pytest.mark.skipif(arm_compiler() is None or qemu() is None, reason="needs qemu-aarch64 and an aarch64 C compiler")
def test_an_arm_build_gives_the_same_bits_as_every_instruction_set_here(tmp_path) -> None:
    arm = build(arm_compiler(), tmp_path / "kernel_outputs_arm")
    arm_hashes = hashes([qemu(), str(arm)])
    assert len(arm_hashes) > 400  # every kernel and case reported
    host = build(host_compiler(), tmp_path / "kernel_outputs_host")
    for width in range(len(KERNEL_WIDTHS)):
        assert hashes([str(host), str(width)]) == arm_hashes, f"{platform.machine()} at {KERNEL_WIDTHS[width]}"
