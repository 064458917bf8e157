"""ksparse_pl: sparse-activation layers, initializers and Lightning training for PyTorch."""

from ksparse_pl.layers import KSparse, KSparse2d, KWinners, KWinners2d, SparseActivation, SparseWeights

__version__ = "0.1.0"

__all__ = ["KSparse", "KSparse2d", "KWinners", "KWinners2d", "SparseActivation", "SparseWeights", "__version__"]
