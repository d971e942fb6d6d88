"""Classifiers for the paper's Section 4.1 (Table 1): DRAW's read as a differentiable RAM, and the plain
convolutional baseline of the table's first row. Plain PyTorch, no Lightning or Hydra.

Shapes: B batch, H x W image, N glimpse size, S LSTM units, K classes.
"""
from dataclasses import asdict, dataclass, field
from typing import Iterable, List, NamedTuple, Optional

import torch
import torch.nn as nn

from draw.attention import AttentionWindow, Filterbank, init_window, read
from draw.model import init_forget_gate


@dataclass
class GlimpseConfig:
    """The paper's sizes (Table 3, cluttered MNIST): a 12 x 12 read into an LSTM of 256 units."""

    height: int = 100
    width: int = 100
    classes: int = 10
    glimpses: int = 8
    read_n: int = 12
    hidden_size: int = 256
    # Where the first window starts (init_window): None keeps nn.Linear's own start, the whole image.
    read_init: dict = field(default_factory=lambda: {"stride": None, "var": None, "gamma": None})
    # The LSTM's forget-gate bias at the start (None: nn.LSTMCell's own, near 0), as DRAWConfig.forget_bias.
    forget_bias: Optional[float] = None


@dataclass
class ConvConfig:
    """Table 1's first row: two convolutional layers (channels, kernel, stride 2, each followed by 2 x 2 max
    pooling), then a linear softmax layer on a 4 x 4 max-pooled map."""

    height: int = 100
    width: int = 100
    classes: int = 10
    channels: List[int] = field(default_factory=lambda: [32, 64])
    kernel: int = 5


class ClassifierOutput(NamedTuple):
    logits: torch.Tensor  # (B, K)
    windows: List[AttentionWindow]  # one per glimpse, with record=True (else empty)
    glimpses: List[torch.Tensor]  # (B, N, N) per glimpse, with record=True (else empty)


class GlimpseClassifier(nn.Module):
    """Differentiable RAM (Section 4.1): at each of `glimpses` steps the read window, placed by the LSTM's
    previous state (Eqs. 21-26), gives an N x N glimpse of the image alone (Eq. 27; there is no canvas or
    error image); the LSTM takes it in, and a softmax layer on its last state classifies.

    The state starts at zero, as DRAW's decoder does, so the first window is placed by Eq. 21's learned
    bias alone: one place for every image, which training chooses (init_window: the whole image)."""

    def __init__(self, cfg: GlimpseConfig):
        super().__init__()
        self.cfg = cfg
        N = cfg.read_n
        self.window_params = nn.Linear(cfg.hidden_size, 5)  # Eq. 21, from h_{t-1}
        self.filterbank = Filterbank(N, cfg.height, cfg.width)
        self.lstm = nn.LSTMCell(N * N, cfg.hidden_size)
        if cfg.forget_bias is not None:
            init_forget_gate(self.lstm, cfg.forget_bias)
        self.classify = nn.Linear(cfg.hidden_size, cfg.classes)
        init_window(self.window_params, N, cfg.height, cfg.width, **cfg.read_init)

    def forward(self, x: torch.Tensor, record: bool = False, glimpses: Optional[int] = None) -> ClassifierOutput:
        """x (B, H, W) -> logits (B, K); `glimpses` overrides the configured number."""
        B = len(x)
        h = c = x.new_zeros(B, self.cfg.hidden_size)  # (B, S)
        images = x.view(B, 1, self.cfg.height, self.cfg.width)  # (B, 1, H, W)
        windows, contents = [], []
        for _ in range(glimpses or self.cfg.glimpses):
            window, F_x, F_y = self.filterbank(self.window_params(h))  # Eqs. 21-26, (B, N, W), (B, N, H)
            glimpse = read(images, window, F_x, F_y)  # Eq. 27, (B, 1, N, N)
            h, c = self.lstm(glimpse.flatten(1), (h, c))  # (B, S)
            if record:
                windows.append(window)
                contents.append(glimpse[:, 0])
        return ClassifierOutput(self.classify(h), windows, contents)


class ConvClassifier(nn.Module):
    """Table 1's convolutional baseline: it sees the whole image at once."""

    def __init__(self, cfg: ConvConfig):
        super().__init__()
        self.cfg = cfg
        layers, previous = [], 1
        for channels in cfg.channels:
            layers += [nn.Conv2d(previous, channels, cfg.kernel, stride=2, padding=cfg.kernel // 2), nn.ReLU(), nn.MaxPool2d(2)]
            previous = channels
        self.features = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(4), nn.Flatten())
        self.classify = nn.Linear(previous * 16, cfg.classes)

    def forward(self, x: torch.Tensor, record: bool = False, glimpses: Optional[int] = None) -> ClassifierOutput:
        logits = self.classify(self.features(x.view(len(x), 1, self.cfg.height, self.cfg.width)))  # (B, K)
        return ClassifierOutput(logits, [], [])


ARCHITECTURES = {"glimpse": (GlimpseConfig, GlimpseClassifier), "cnn": (ConvConfig, ConvClassifier)}


def build_classifier(hparams: dict) -> nn.Module:
    """A classifier from plain hyper-parameters: `architecture` (glimpse or cnn) and its config's fields."""
    hparams = dict(hparams)
    config, model = ARCHITECTURES[hparams.pop("architecture")]
    return model(config(**hparams))


def classifier_defaults(architecture: str) -> dict:
    """Every field of an architecture's config at its default, for comparing a checkpoint with a config."""
    return {"architecture": architecture, **asdict(ARCHITECTURES[architecture][0]())}


@torch.no_grad()
def first_misclassified(model: nn.Module, batches: Iterable, n: int, device="cpu", max_batches: Optional[int] = None):
    """The first n images (n, H, W) that `model` gets wrong among `batches` of (x, y), and their labels (n,);
    fewer when the batches (or the first max_batches of them) hold fewer."""
    wrong_x, wrong_y = [], []
    for index, (x, y) in enumerate(batches):
        x, y = x.to(device), y.to(device)
        wrong = model(x).logits.argmax(1) != y
        wrong_x.append(x[wrong])
        wrong_y.append(y[wrong])
        if sum(map(len, wrong_x)) >= n or index + 1 == max_batches:
            break
    return torch.cat(wrong_x)[:n], torch.cat(wrong_y)[:n]
