"""Data sets as LightningDataModules, one module each over draw/data/base.py. Configs name them by their
place here (conf/data/*.yaml: _target_: draw.data.MNISTDataModule)."""
from draw.data.base import BINARIZATIONS, BinarizedImages, DataModule, ImageDataModule, check_binarization
from draw.data.cifar10 import CIFAR10DataModule
from draw.data.cluttered import ClutteredMNISTDataModule
from draw.data.mnist import MNISTDataModule, MNISTNotFoundError, load_mnist
from draw.data.svhn import SVHNDataModule
from draw.data.two_digit import TwoDigitMNISTDataModule

__all__ = ["BINARIZATIONS", "BinarizedImages", "CIFAR10DataModule", "ClutteredMNISTDataModule", "DataModule",
           "ImageDataModule", "MNISTDataModule", "MNISTNotFoundError", "SVHNDataModule", "TwoDigitMNISTDataModule",
           "check_binarization", "load_mnist"]
