"""Two-digit MNIST, the paper's Section 4.2: two MNIST digits at uniformly random places on a larger canvas
(60 x 60 in the paper), overlaps added and clipped to 1, made by the cluttered-MNIST generator
(draw/data/cluttered.py) with two digits and no clutter, then binarized as MNIST is."""
from typing import Optional

import torch
from torch.utils.data import Dataset

from draw.data.base import ImageDataModule, batch_generator, binarize, check_binarization
from draw.data.cluttered import scenes
from draw.data.mnist import MNIST_SIZE, load_mnist
from draw.errors import UserError


def two_digit_images(digits: torch.Tensor, indices: torch.Tensor, height: int, width: int, generator=None) -> torch.Tensor:
    """Image i holds digit indices[i] of digits (S, 28, 28) and a uniformly random second one: uint8 (B, height, width)."""
    others = torch.randint(0, len(digits), (len(indices),), generator=generator)
    return scenes(torch.stack([digits[indices], digits[others]], 1), height, width, generator=generator)


class FreshTwoDigitImages(Dataset):
    """Training images made afresh each time they are served (new partners and places, from the batch's own seed
    when ResumableBatches serves it, else torch's random stream), in [0, 1] and binarized as `mode` says."""

    def __init__(self, digits: torch.Tensor, height: int, width: int, mode: str):
        self.digits, self.height, self.width, self.mode = digits, height, width, check_binarization(mode)

    def __len__(self):
        return len(self.digits)

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        generator = batch_generator(indices)  # one stream for the batch's places and its binarization
        images = two_digit_images(self.digits, torch.as_tensor(indices), self.height, self.width, generator).float() / 255
        return binarize(images, self.mode, generator)


class TwoDigitMNISTDataModule(ImageDataModule):
    """Two-digit images from MNIST's files: training images from the train file's first 60k - val_size digits,
    new each epoch; validation from its last val_size, test from the test file, made once from `seed` (and
    binarized from binarization_seed), the same in every run and on every machine. One image per digit."""

    name, channels, resizable = "two-digit MNIST", 1, True

    def __init__(self, data_dir: str = "data", batch_size: int = 100, val_size: int = 10000, binarization: str = "dynamic",
                 eval_binarization: str = "fixed", binarization_seed: int = 0, num_workers: int = 0,
                 channels: Optional[int] = None, height: int = 60, width: int = 60, seed: int = 0):
        if min(height, width) < MNIST_SIZE:
            raise UserError(f"data.height={height}, data.width={width} are not allowed: at least {MNIST_SIZE}, a whole MNIST digit")
        super().__init__(data_dir, batch_size, val_size, binarization, eval_binarization, binarization_seed,
                         num_workers, channels, height, width)

    def load(self, train: bool) -> torch.Tensor:
        return load_mnist(self.hparams.data_dir, train)

    def images(self, train: bool) -> torch.Tensor:
        return self.load(train)  # the digits: images are made from them

    def train_dataset(self, digits: torch.Tensor, rows: slice) -> Dataset:
        return FreshTwoDigitImages(digits[rows], self.hparams.height, self.hparams.width, self.hparams.binarization)

    def eval_dataset(self, digits: torch.Tensor, rows: slice, seed_offset: int) -> Dataset:
        """Images made once from seed + seed_offset out of the `rows` digits, then binarized as the base class does."""
        hp, digits = self.hparams, digits[rows]
        generator = torch.Generator().manual_seed(hp.seed + seed_offset)
        images = two_digit_images(digits, torch.arange(len(digits)), hp.height, hp.width, generator)
        return super().eval_dataset(images, slice(None), seed_offset)
