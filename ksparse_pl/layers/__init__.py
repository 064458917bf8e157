"""``torch.nn`` modules that hold the sparse layers' state in buffers; no Lightning import."""

from ksparse_pl.layers._base import SparseActivation
from ksparse_pl.layers.ksparse import KSparse, KWinners
from ksparse_pl.layers.ksparse2d import KSparse2d, KWinners2d
from ksparse_pl.layers.sparse_weights import SparseWeights

__all__ = ["KSparse", "KSparse2d", "KWinners", "KWinners2d", "SparseActivation", "SparseWeights"]
