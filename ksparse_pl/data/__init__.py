"""LightningDataModules."""

from ksparse_pl.data.array import ArrayDataModule
from ksparse_pl.data.digits import DigitsDataModule
from ksparse_pl.data.vision import VisionDataModule

__all__ = ["ArrayDataModule", "DigitsDataModule", "VisionDataModule"]
