"""Cluttered translated MNIST (Mnih et al. 2014), the classification data of the paper's Section 4.1 and Table 1.

It follows the generator Mnih et al. published (github.com/google-deepmind/mnist-cluttered, mnist_cluttered.lua):
a black size x size image; `distractors` pieces of distractor_size x distractor_size, each cut at a uniformly
random place from a uniformly random digit of the same split, added at uniformly random places and clipped
to 1; then the labelled digit added at a uniformly random place (wholly inside), clipped to 1 again. The
lua script clips after the pieces and after the digit; all additions being positive, one clip at the end
gives the same image. Made on the fly, a whole batch at once, from MNIST's files (no extra download).
"""
from typing import Optional

import torch
from torch.utils.data import Dataset

from draw.data.base import DataModule, batch_generator
from draw.data.mnist import MNIST_SIZE, load_labelled_mnist
from draw.errors import UserError


def add_at_random_places(canvas: torch.Tensor, owners: torch.Tensor, sprites: torch.Tensor, generator=None) -> None:
    """Add each sprite (K, h, w) to its canvas (owners (K,) index canvas (B, H, W)) at a uniformly random place
    wholly inside it. Overlaps add up: clip afterwards."""
    K, h, w = sprites.shape
    H, W = canvas.shape[1:]
    top = torch.randint(0, H - h + 1, (K,), generator=generator)
    left = torch.randint(0, W - w + 1, (K,), generator=generator)
    rows = (top[:, None] + torch.arange(h))[:, :, None]  # (K, h, 1)
    cols = (left[:, None] + torch.arange(w))[:, None, :]  # (K, 1, w)
    canvas.index_put_((owners[:, None, None], rows, cols), sprites.to(canvas.dtype), accumulate=True)


def random_pieces(sources: torch.Tensor, count: int, size: int, generator=None) -> torch.Tensor:
    """`count` size x size pieces (count, size, size), each cut at a random place from a random image of sources (S, h, w)."""
    S, h, w = sources.shape
    which = torch.randint(0, S, (count,), generator=generator)
    top = torch.randint(0, h - size + 1, (count,), generator=generator)
    left = torch.randint(0, w - size + 1, (count,), generator=generator)
    rows = (top[:, None] + torch.arange(size))[:, :, None]  # (count, size, 1)
    cols = (left[:, None] + torch.arange(size))[:, None, :]  # (count, 1, size)
    return sources[which[:, None, None], rows, cols]


def cluttered_images(digits: torch.Tensor, sources: torch.Tensor, size: int, distractors: int, distractor_size: int,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """uint8 digits (B, 28, 28) -> uint8 cluttered images (B, size, size), distractor pieces cut from sources (S, 28, 28)."""
    return scenes(digits.unsqueeze(1), size, size, sources, distractors, distractor_size, generator)


def scenes(digits: torch.Tensor, height: int, width: int, sources: Optional[torch.Tensor] = None, distractors: int = 0,
           distractor_size: int = 8, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """uint8 digits (B, K, h, w) -> uint8 images (B, height, width): first `distractors` pieces cut from sources
    (S, h, w), then the K digits of each image, each wholly inside at a uniformly random place; overlaps added and
    clipped to 255 (mnist_cluttered.lua's order and clipping; it places K digits the same way)."""
    B, K = digits.shape[:2]
    canvas = torch.zeros(B, height, width, dtype=torch.int16)  # sums of up to a few uint8 values
    if distractors:
        pieces = random_pieces(sources, B * distractors, distractor_size, generator)  # (B*D, d, d)
        add_at_random_places(canvas, torch.arange(B).repeat_interleave(distractors), pieces, generator)
    add_at_random_places(canvas, torch.arange(B).repeat_interleave(K), digits.flatten(0, 1), generator)
    return canvas.clamp_(max=255).to(torch.uint8)


class ClutteredDigits(Dataset):
    """MNIST digits with their labels, served as cluttered images in [0, 1] (B, size, size) and labels (B,).

    seed=None: new places and clutter each time an image is served (training: from the batch's own seed when
    ResumableBatches serves it, else torch's random stream); a seed: every image made once from it, the same in
    every run and on every machine."""

    def __init__(self, digits: torch.Tensor, labels: torch.Tensor, size: int, distractors: int, distractor_size: int,
                 seed: Optional[int] = None, chunk: int = 1000):
        self.digits, self.labels = digits, labels
        self.settings = dict(size=size, distractors=distractors, distractor_size=distractor_size)
        self.fixed = None
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
            self.fixed = torch.cat([cluttered_images(digits[i:i + chunk], digits, generator=generator, **self.settings)
                                    for i in range(0, len(digits), chunk)])

    def __len__(self):
        return len(self.digits)

    def __getitem__(self, index):
        images, labels = self.__getitems__([index])
        return images[0], labels[0]

    def __getitems__(self, indices):
        generator = batch_generator(indices)
        indices = torch.as_tensor(indices)
        if self.fixed is not None:
            images = self.fixed[indices]
        else:
            images = cluttered_images(self.digits[indices], self.digits, **self.settings, generator=generator)
        return images.float() / 255, self.labels[indices]


class ClutteredMNISTDataModule(DataModule):
    """Cluttered MNIST from MNIST's files: training digits are the train file's first 60k - val_size (new places
    and clutter every epoch), validation its last val_size, test the test file (both made once from `seed`).
    Distractor pieces come from the same split's digits."""

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 100,
        val_size: int = 10000,
        size: int = 100,
        distractors: int = 8,
        distractor_size: int = 8,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        if not MNIST_SIZE <= size:
            raise UserError(f"data.size={size} must be >= {MNIST_SIZE}: the image holds a whole MNIST digit")
        if not 1 <= distractor_size <= MNIST_SIZE:
            raise UserError(f"data.distractor_size={distractor_size} must be in 1..{MNIST_SIZE}: pieces are cut from MNIST digits")
        if distractors < 0:
            raise UserError(f"data.distractors={distractors} must be >= 0")
        self.save_hyperparameters()

    @property
    def settings(self) -> dict:
        hp = self.hparams
        return dict(size=hp.size, distractors=hp.distractors, distractor_size=hp.distractor_size)

    def prepare_data(self):
        for train in (True, False):
            load_labelled_mnist(self.hparams.data_dir, train)

    def setup(self, stage=None):
        hp = self.hparams
        if stage in (None, "fit", "validate") and "train" not in self.datasets:
            images, labels = load_labelled_mnist(hp.data_dir, train=True)
            if not 0 < hp.val_size < len(images):
                raise UserError(f"data.val_size={hp.val_size} must be in 1..{len(images) - 1}")
            split = len(images) - hp.val_size
            self.datasets["train"] = ClutteredDigits(images[:split], labels[:split], **self.settings)
            self.datasets["val"] = ClutteredDigits(images[split:], labels[split:], **self.settings, seed=hp.seed)
        if stage in (None, "test", "predict") and "test" not in self.datasets:
            images, labels = load_labelled_mnist(hp.data_dir, train=False)
            self.datasets["test"] = ClutteredDigits(images, labels, **self.settings, seed=hp.seed + 1)
