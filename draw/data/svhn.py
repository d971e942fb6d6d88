"""SVHN (Netzer et al. 2011), the paper's Section 4.3: torchvision's 32 x 32 colour crops of house-number digits,
train_32x32.mat and test_32x32.mat, read by torchvision's own reader (scipy's loadmat)."""
from pathlib import Path

import torch
from torchvision.datasets import SVHN

from draw.data.base import ImageDataModule, read_files


class _SVHNFiles(SVHN):
    """torchvision's SVHN reader, taking the files that are there: its check compares whole-file checksums, so any
    other copy (a subset, a test's tiny file) would count as missing. A download still checks them."""

    def _check_integrity(self) -> bool:
        return (Path(self.root) / self.filename).is_file()

    def download(self) -> None:
        if not self._check_integrity():  # torchvision's downloads again whatever file is there
            super().download()


class SVHNDataModule(ImageDataModule):
    """SVHN's train file (73,257 images) split into train and its last val_size for validation; the test file
    (26,032) for test. Intensities in [0, 1] (binarization none), 32 x 32, or resized to height x width."""

    name, channels, native_size, resizable = "SVHN", 3, (32, 32), True

    def load(self, train: bool) -> torch.Tensor:
        folder = Path(self.hparams.data_dir) / "svhn"
        split = "train" if train else "test"
        svhn = read_files(lambda: _SVHNFiles(str(folder), split=split, download=True), folder,
                          "SVHN's train_32x32.mat and test_32x32.mat are")
        return torch.from_numpy(svhn.data)  # (N, 3, 32, 32) uint8
