"""Data sets as LightningDataModules, one module each over draw/data/base.py. Configs name them by their
place here (conf/data/*.yaml: _target_: draw.data.MNISTDataModule)."""
from draw.data.base import DataModule
from draw.data.cluttered import ClutteredMNISTDataModule
from draw.data.mnist import BINARIZATIONS, BinarizedImages, MNISTDataModule, MNISTNotFoundError, check_binarization, load_mnist

__all__ = ["BINARIZATIONS", "BinarizedImages", "ClutteredMNISTDataModule", "DataModule", "MNISTDataModule",
           "MNISTNotFoundError", "check_binarization", "load_mnist"]
