"""CIFAR-10 (Krizhevsky 2009), the paper's Section 4.4: 32 x 32 colour images, torchvision's python batches
(cifar-10-batches-py/data_batch_1..5, test_batch) read by torchvision's own reader."""
from pathlib import Path

import torch
from torchvision.datasets import CIFAR10

from draw.data.base import ImageDataModule, read_files


class _CIFAR10Files(CIFAR10):
    """torchvision's CIFAR-10 reader, taking the batch files that are there: its checks compare whole-file
    checksums, so any other copy (a test's tiny batches) would count as missing. A download still checks them.
    The class names (batches.meta) are not needed."""

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        pass


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10's 50,000 training images split into train and their last val_size for validation; the 10,000
    test images for test. Intensities in [0, 1] (binarization none), 32 x 32, or resized to height x width."""

    name, channels, native_size, resizable = "CIFAR-10", 3, (32, 32), True

    def load(self, train: bool) -> torch.Tensor:
        folder = Path(self.hparams.data_dir) / "cifar10"
        cifar = read_files(lambda: _CIFAR10Files(str(folder), train=train, download=True), folder / "cifar-10-batches-py",
                           "CIFAR-10's data_batch_1..5 and test_batch are")
        return torch.from_numpy(cifar.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32) uint8
