"""LightningDataModules."""

from ksparse_pl.data.digits import DigitsDataModule

__all__ = ["DigitsDataModule"]
