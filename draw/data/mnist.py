"""MNIST for DRAW: the 50k/10k/10k split and binarization, served from memory in whole batches."""
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.datasets import MNIST

from draw.data.base import DataModule
from draw.errors import UserError

BINARIZATIONS = ("dynamic", "fixed", "threshold", "none")


class MNISTNotFoundError(UserError):
    pass


def check_binarization(mode: str, key: str = "binarization") -> str:
    if mode not in BINARIZATIONS:
        raise UserError(f"{key}={mode!r} is not a binarization: use one of {', '.join(BINARIZATIONS)}")
    return mode


def load_mnist(data_dir: str, train: bool) -> torch.Tensor:
    """The uint8 images (N, 28, 28) of torchvision's MNIST under data_dir, downloaded there if absent."""
    return load_labelled_mnist(data_dir, train)[0]


def load_labelled_mnist(data_dir: str, train: bool):
    """The uint8 images (N, 28, 28) and int64 labels (N,) of torchvision's MNIST under data_dir, downloaded
    there if absent. A failed download leaves no folder behind that was not there before."""
    raw = Path(data_dir).resolve() / "MNIST" / "raw"
    before = [folder for folder in (raw, *raw.parents) if not folder.exists()]
    try:
        mnist = MNIST(data_dir, train=train, download=True)
        return mnist.data, mnist.targets
    except (RuntimeError, OSError) as e:  # no network, or a folder that cannot be written
        for folder in before:  # innermost first; rmdir refuses a folder that holds anything
            try:
                folder.rmdir()
            except OSError:
                break
        raise MNISTNotFoundError(
            f"MNIST is not in {raw} and could not be downloaded ({type(e).__name__}): put train-images-idx3-ubyte, "
            f"train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte there, "
            f"or set data.data_dir to a folder holding MNIST/raw/"
        ) from None


class BinarizedImages(Dataset):
    """Images in [0, 1], (N, H, W), binarized as `mode` says.

    dynamic: a fresh Bernoulli draw each time an image is served (training); fixed: one Bernoulli draw per
    image from `seed`, the same in every run (validation and test); threshold: x > 0.5; none: grey levels.
    `rows` keeps a part of the images after binarizing, so a fixed draw does not depend on the split.
    """

    def __init__(self, images: torch.Tensor, mode: str, seed: int = 0, rows: slice = slice(None)):
        self.mode = check_binarization(mode)
        probs = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        if mode == "fixed":
            probs = torch.bernoulli(probs, generator=torch.Generator().manual_seed(seed))
        elif mode == "threshold":
            probs = (probs > 0.5).float()
        self.images = probs[rows]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        # The DataLoader fetches a whole batch with one indexing op instead of batch_size calls.
        batch = self.images[indices]
        return torch.bernoulli(batch) if self.mode == "dynamic" else batch


class MNISTDataModule(DataModule):
    """The 60k MNIST train file split into its first 60k - val_size images (train) and its last val_size
    (validation); the 10k test file for test."""

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 100,
        val_size: int = 10000,
        binarization: str = "dynamic",
        eval_binarization: str = "fixed",
        binarization_seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        check_binarization(binarization, "data.binarization")
        check_binarization(eval_binarization, "data.eval_binarization")
        self.save_hyperparameters()

    def prepare_data(self):
        for train in (True, False):
            load_mnist(self.hparams.data_dir, train)

    def setup(self, stage=None):
        hp = self.hparams
        if stage in (None, "fit", "validate") and "train" not in self.datasets:
            train_file = load_mnist(hp.data_dir, train=True)
            if not 0 < hp.val_size < len(train_file):
                raise UserError(f"data.val_size={hp.val_size} must be in 1..{len(train_file) - 1}")
            self.datasets["train"] = BinarizedImages(train_file, hp.binarization, rows=slice(-hp.val_size))
            self.datasets["val"] = BinarizedImages(
                train_file, hp.eval_binarization, hp.binarization_seed, rows=slice(-hp.val_size, None)
            )
        if stage in (None, "test", "predict") and "test" not in self.datasets:
            test_file = load_mnist(hp.data_dir, train=False)
            self.datasets["test"] = BinarizedImages(test_file, hp.eval_binarization, hp.binarization_seed + 1)
