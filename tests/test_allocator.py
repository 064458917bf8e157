"""keep_freed_memory: large tensors come from the heap, which keeps freed memory; the CLI sets it.

Checked on the process's memory map rather than by page-fault counts: this machine's kernel also pages out
memory it finds idle (DAMON), which makes fault counts vary from run to run.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)

WHERE_A_FREED_TENSOR_WAS = """
import torch

def heap():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            start, end = (int(a, 16) for a in line.split()[0].split("-"))
            return start, end
    return 0, 0

tensor = torch.empty(16 * 2**20)  # 64 MiB
start, end = tensor.data_ptr(), tensor.data_ptr() + 64 * 2**20
del tensor
low, high = heap()
print("kept in the heap" if low <= start and end <= high else "returned to the system")
"""


def where_a_freed_tensor_was(setup: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", setup + WHERE_A_FREED_TENSOR_WAS],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_a_freed_64_mib_tensor_stays_in_the_heap_for_reuse() -> None:
    assert where_a_freed_tensor_was("") == "returned to the system"  # glibc's default: mmap, munmap on free
    kept = "from ksparse_pl.allocator import keep_freed_memory\nassert keep_freed_memory()\n"
    assert where_a_freed_tensor_was(kept) == "kept in the heap"


CLI_HELP = """
from ksparse_pl.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
"""


def test_the_cli_keeps_freed_memory_unless_told_not_to() -> None:
    assert where_a_freed_tensor_was(CLI_HELP) == "kept in the heap"
    assert where_a_freed_tensor_was(CLI_HELP, KSPARSE_PL_KEEP_FREED_MEMORY="0") == "returned to the system"
