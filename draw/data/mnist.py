"""MNIST for DRAW: the 50k/10k/10k split and binarization, served from memory in whole batches."""
from pathlib import Path

import torch
from torchvision.datasets import MNIST

from draw.data.base import ImageDataModule, read_files
from draw.errors import UserError

MNIST_SIZE = 28  # MNIST's digits are 28 x 28


class MNISTNotFoundError(UserError):
    pass


def load_mnist(data_dir: str, train: bool) -> torch.Tensor:
    """The uint8 images (N, 28, 28) of torchvision's MNIST under data_dir, downloaded there if absent."""
    return load_labelled_mnist(data_dir, train)[0]


def load_labelled_mnist(data_dir: str, train: bool):
    """The uint8 images (N, 28, 28) and int64 labels (N,) of torchvision's MNIST under data_dir, downloaded
    there if absent."""
    files = "MNIST (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte) is"
    mnist = read_files(lambda: MNIST(data_dir, train=train, download=True), Path(data_dir) / "MNIST" / "raw", files,
                       MNISTNotFoundError)
    return mnist.data, mnist.targets


class MNISTDataModule(ImageDataModule):
    """The 60k MNIST train file split into its first 60k - val_size images (train) and its last val_size
    (validation); the 10k test file for test."""

    name, channels, native_size = "MNIST", 1, (MNIST_SIZE, MNIST_SIZE)

    def load(self, train: bool) -> torch.Tensor:
        return load_mnist(self.hparams.data_dir, train)
