"""What every data set's LightningDataModule shares: its `datasets` by split, served in whole batches, the
global batch size shared out among DDP processes, training batches that a resumed run takes exactly as the
uninterrupted run would have; and for DRAW's images (ImageDataModule) the split, the binarization and the image shape."""
import math
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from draw.errors import UserError

BINARIZATIONS = ("dynamic", "fixed", "threshold", "none")


def check_binarization(mode: str, key: str = "binarization") -> str:
    if mode not in BINARIZATIONS:
        raise UserError(f"{key}={mode!r} is not a binarization: use one of {', '.join(BINARIZATIONS)}")
    return mode


class SeededBatch(list):
    """A training batch's indices, and the seed of its own random draws (binarization; made images' places)."""

    def __init__(self, indices, seed: int):
        super().__init__(indices)
        self.seed = seed


def batch_generator(indices) -> Optional[torch.Generator]:
    """Where a batch's random draws come from: its own generator for a SeededBatch, else torch's global stream."""
    seed = getattr(indices, "seed", None)
    return None if seed is None else torch.Generator().manual_seed(seed)


def _mixed(*numbers: int) -> int:
    return hash(numbers) % 2**63  # tuples of ints hash the same in every process


class ResumableBatches(Sampler):
    """A single process's training batches: epoch e's order is a permutation drawn from (seed, e), and each batch
    carries a seed for its own random draws, so batch b of epoch e is the same in every run with this seed, whatever
    ran before it. The first epoch served is `epoch`, from its batch `start` (a run resumed mid-epoch takes the
    batches the uninterrupted run took); each later iteration is the next epoch (Lightning iterates once an epoch)."""

    def __init__(self, size: int, batch_size: int, seed: int, epoch: int = 0, start: int = 0):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.start, self._iterated = epoch, start, False

    def __len__(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def __iter__(self):
        if self._iterated:
            self.epoch, self.start = self.epoch + 1, 0
        self._iterated = True
        return self._batches(self.epoch, self.start)

    def _batches(self, epoch: int, start: int):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(_mixed(self.seed, epoch)))
        for b in range(start, len(self)):
            yield SeededBatch(order[b * self.batch_size:(b + 1) * self.batch_size].tolist(), _mixed(self.seed, epoch, b))


def binarize(probs: torch.Tensor, mode: str, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Images in [0, 1] binarized as `mode` says (dynamic and fixed: Bernoulli draws; none: as they are)."""
    if mode in ("dynamic", "fixed"):
        return torch.bernoulli(probs, generator=generator)
    if mode == "threshold":
        return (probs > 0.5).float()
    return probs


class BinarizedImages(Dataset):
    """Images in [0, 1], (N, H, W) or (N, C, H, W), binarized as `mode` says.

    dynamic: a fresh Bernoulli draw each time an image is served (training); fixed: one Bernoulli draw per
    image from `seed`, the same in every run (validation and test); threshold: x > 0.5; none: grey levels
    (or colour intensities). `rows` keeps a part of the images after binarizing, so a fixed draw does not
    depend on the split.
    """

    def __init__(self, images: torch.Tensor, mode: str, seed: int = 0, rows: slice = slice(None)):
        self.mode = check_binarization(mode)
        probs = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        if mode != "dynamic":
            probs = binarize(probs, mode, torch.Generator().manual_seed(seed))
        self.images = probs[rows]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        # The DataLoader fetches a whole batch with one indexing op instead of batch_size calls.
        batch = self.images[indices]
        return torch.bernoulli(batch, generator=batch_generator(indices)) if self.mode == "dynamic" else batch


def _batch_as_is(batch):
    return batch


class DataModule(pl.LightningDataModule):
    """A subclass fills `self.datasets` ("train", "val", "test") in setup() with datasets whose
    __getitems__ returns a whole batch, and has `batch_size` and `num_workers` hyper-parameters."""

    def __init__(self):
        super().__init__()
        self.datasets = {}
        self._resume = (0, 0)  # (epoch, batch) where a resumed run's training batches begin

    @property
    def per_process_batch_size(self) -> int:
        """data.batch_size is the global batch: under DDP each process takes its share."""
        processes = self.trainer.world_size if self.trainer is not None else 1
        if self.hparams.batch_size % processes:
            raise UserError(f"data.batch_size={self.hparams.batch_size} must divide among {processes} processes")
        return self.hparams.batch_size // processes

    @property
    def _to_cuda(self) -> bool:
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def _loader(self, split: str, shuffle: bool = False):
        settings = dict(batch_size=self.per_process_batch_size, shuffle=shuffle)
        if shuffle and (self.trainer is None or self.trainer.world_size == 1):
            # torch.initial_seed(): the run's seed (train() seeds everything first); the loader's own generator keeps
            # making its iterator off torch's global stream, which the model's noise draws from.
            batches = ResumableBatches(len(self.datasets[split]), self.per_process_batch_size, torch.initial_seed(), *self._resume)
            settings = dict(batch_sampler=batches, generator=torch.Generator().manual_seed(torch.initial_seed()))
        return DataLoader(
            self.datasets[split],
            num_workers=self.hparams.num_workers,
            collate_fn=_batch_as_is,
            persistent_workers=self.hparams.num_workers > 0,
            pin_memory=self._to_cuda,  # page-locked batches copy to a GPU faster
            **settings,
        )

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def state_dict(self) -> dict:
        """In a checkpoint: where training stands, (epoch, its next batch), for ResumableBatches to go on from there."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        epoch, batch = trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": epoch + 1, "batch": 0} if batch >= trainer.num_training_batches else {"epoch": epoch, "batch": batch}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume = (state["epoch"], state["batch"])

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")


def read_files(read, folder: Path, files: str, error=UserError):
    """What torchvision's reader `read()` returns (it downloads into `folder` when the files are absent and the
    network is there); if it cannot, one line naming the files to put in folder. A failed download leaves no
    folder behind that was not there before."""
    folder = Path(folder).resolve()
    before = [f for f in (folder, *folder.parents) if not f.exists()]
    try:
        return read()
    except (RuntimeError, OSError, ValueError, KeyError) as e:  # no network, unwritable folder, or unreadable files
        for created in before:  # innermost first; rmdir refuses a folder that holds anything
            try:
                created.rmdir()
            except FileNotFoundError:  # never made (the reader writes above it)
                continue
            except OSError:
                break
        raise error(f"{files} not in {folder}, or not readable there, and could not be downloaded ({type(e).__name__}): "
                    f"put them there, or set paths.data_dir (or data.data_dir, or DRAW_DATA_DIR) to the folder that holds them") from None


def resized(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, C, H, W) at height x width (bilinear, antialiased when shrinking)."""
    if tuple(images.shape[-2:]) == (height, width):
        return images
    grey = images.dim() == 3
    x = images.unsqueeze(1) if grey else images
    out = torch.cat([F.interpolate(chunk.float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False)
                     for chunk in x.split(4096)])
    out = out.round().clamp(0, 255).to(torch.uint8)
    return out.squeeze(1) if grey else out


class ImageDataModule(DataModule):
    """Images for DRAW from a train file and a test file: the train file split into its first N - val_size images
    (train) and its last val_size (validation), the test file for test; binarized as `binarization` (training)
    and `eval_binarization` (validation and test, from `binarization_seed`) say; served as (B, H, W) grey or
    (B, C, H, W) colour images in [0, 1].

    A data set subclasses it with `load(train) -> uint8 (N, H, W) or (N, C, H, W)` and its `channels`; height and
    width are the size served, the files' own unless the data set allows resizing (`resizable`). One whose
    images are made rather than read overrides `train_dataset` and `eval_dataset`."""

    name = "images"
    channels = 1
    native_size: Optional[tuple] = None  # (H, W) of the files
    resizable = False

    def __init__(self, data_dir: str = "data", batch_size: int = 100, val_size: int = 10000, binarization: str = "dynamic",
                 eval_binarization: str = "fixed", binarization_seed: int = 0, num_workers: int = 0,
                 channels: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None):
        super().__init__()
        check_binarization(binarization, "data.binarization")
        check_binarization(eval_binarization, "data.eval_binarization")
        height, width = self.check_shape(channels, height, width)
        self.save_hyperparameters()
        self.hparams.update(channels=self.channels, height=height, width=width)

    @classmethod
    def check_shape(cls, channels: Optional[int], height: Optional[int], width: Optional[int]) -> tuple:
        """The (height, width) served for a config's data.channels, data.height and data.width (None: the files'),
        or one line saying what this data set allows."""
        if channels is not None and channels != cls.channels:
            raise UserError(f"data.channels={channels} is not allowed: {cls.name}'s images have {cls.channels}")
        native_h, native_w = cls.native_size or (height, width)
        height, width = height or native_h, width or native_w
        if not cls.resizable and (height, width) != (native_h, native_w):
            raise UserError(f"data.height={height}, data.width={width} are not allowed: {cls.name}'s images are "
                            f"{native_h} x {native_w}")
        return height, width

    def load(self, train: bool) -> torch.Tensor:
        raise NotImplementedError

    def images(self, train: bool) -> torch.Tensor:
        return resized(self.load(train), self.hparams.height, self.hparams.width)

    def prepare_data(self):
        for train in (True, False):
            self.load(train)

    def train_dataset(self, images: torch.Tensor, rows: slice) -> Dataset:
        """Training images: `rows` of the train file's images, binarized afresh each time they are served."""
        return BinarizedImages(images, self.hparams.binarization, rows=rows)

    def eval_dataset(self, images: torch.Tensor, rows: slice, seed_offset: int) -> Dataset:
        """Validation (seed_offset 0) or test (1) images: `rows` of a file's images, binarized once, from
        binarization_seed + seed_offset (drawn over the whole file, so the draw does not depend on the split)."""
        hp = self.hparams
        return BinarizedImages(images, hp.eval_binarization, hp.binarization_seed + seed_offset, rows=rows)

    def setup(self, stage=None):
        hp = self.hparams
        if stage in (None, "fit", "validate") and "train" not in self.datasets:
            train_file = self.images(train=True)
            if not 0 < hp.val_size < len(train_file):
                raise UserError(f"data.val_size={hp.val_size} must be in 1..{len(train_file) - 1}")
            self.datasets["train"] = self.train_dataset(train_file, slice(-hp.val_size))
            self.datasets["val"] = self.eval_dataset(train_file, slice(-hp.val_size, None), 0)
        if stage in (None, "test", "predict") and "test" not in self.datasets:
            self.datasets["test"] = self.eval_dataset(self.images(train=False), slice(None), 1)
