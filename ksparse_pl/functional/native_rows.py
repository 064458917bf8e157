"""Row gathers and scatters of top-k codes on CPU (``csrc/sparse_rows.c``): the wide autoencoder's sparse path.

``torch.sparse.mm`` and ``F.embedding_bag`` do the same work on one thread and with an extra pass: measured at
M = 16384, d = 768, B = 256, k = 32 on a 2-core CPU, the encoder's weight gradient took 8.6 ms by ``sparse.mm``
(2.3 ms of it zeroing the output). These kernels split the work over torch's threads; the scatter gives each thread its
own output rows, so the sums do not depend on the number of threads. Float32 CPU tensors only; the callers
use torch's operations elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ksparse_pl.functional.native import library


def gather_rows(rows: Tensor, indices: Tensor, coef: Tensor) -> Tensor:
    """``out[b] = sum_j coef[b, j] * rows[indices[b, j]]``, shape ``(B, d)``."""
    m, d = rows.shape
    out = rows.new_empty(indices.shape[0], d)
    _run(library().ksparse_gather_rows, rows, indices, coef, out, m, d)
    return out


def dot_rows(rows: Tensor, indices: Tensor, src: Tensor) -> Tensor:
    """``out[b, j] = rows[indices[b, j]] . src[b]``, shape ``(B, k)``."""
    m, d = rows.shape
    out = rows.new_empty(indices.shape)
    _run(library().ksparse_dot_rows, rows, indices, src, out, m, d)
    return out


def scatter_rows(src: Tensor, indices: Tensor, coef: Tensor, m: int) -> Tensor:
    """``out[r] = sum over (b, j) with indices[b, j] = r of coef[b, j] * src[b]``, shape ``(m, d)``."""
    out = src.new_empty(m, src.shape[1])
    _run(library().ksparse_scatter_rows, src, indices, coef, out, m, src.shape[1])
    return out


def _run(kernel: Callable[..., int], a: Tensor, indices: Tensor, b: Tensor, out: Tensor, m: int, d: int) -> None:
    """``kernel(a, indices, b, out, ...)`` on contiguous inputs; the indexed matrix has ``m`` rows of ``d``."""
    batch, k = indices.shape
    a, indices, b = a.contiguous(), indices.contiguous(), b.contiguous()
    status = kernel(
        a.data_ptr(), indices.data_ptr(), b.data_ptr(), out.data_ptr(), batch, k, m, d, torch.get_num_threads()
    )
    if status == 1:
        raise IndexError(f"an index in `indices` is outside [0, {m}) (the rows of the weight).")
    if status:
        raise MemoryError("ksparse_pl's row scatter could not allocate its buffers")
