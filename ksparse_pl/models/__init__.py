"""LightningModules built from the sparse layers."""

from ksparse_pl.models.autoencoder import SparseAutoencoder
from ksparse_pl.models.classifier import SparseClassifier

__all__ = ["SparseAutoencoder", "SparseClassifier"]
