"""LightningDataModules."""

from ksparse_pl.data.array import ArrayDataModule
from ksparse_pl.data.bag_of_words import BagOfWordsDataModule
from ksparse_pl.data.digits import DigitsDataModule
from ksparse_pl.data.patches import ImagePatchesDataModule
from ksparse_pl.data.vision import VisionDataModule

__all__ = ["ArrayDataModule", "BagOfWordsDataModule", "DigitsDataModule", "ImagePatchesDataModule", "VisionDataModule"]
