"""LightningModules built from the sparse layers."""

from ksparse_pl.models.autoencoder import SparseAutoencoder

__all__ = ["SparseAutoencoder"]
