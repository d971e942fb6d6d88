"""The paper's figures, from the shipped models and MNIST's files, into one folder with an index:

    python -m draw.figures [paths.data_dir=/path/to/mnist] [out=docs/figures] [draw=CKPT] [sequences=CKPT ...]
    python -m draw.figures data=svhn draw=CKPT paths.data_dir=/path/to/data out=figures_svhn   # Figs. 9, 10, 12
    python -m draw.figures sequences=CKPT two_digit=null   # Fig. 7 from another model; no two-digit model

filterbank.png (Fig. 3): a 3x3 grid of filters on an image, and 12x12 patches read from it at three strides and
variances. zoom.png (Fig. 4): a 100x100 image, 12x12 patches read with 144 filters at several zooms, and the image
written back from each patch through the transposed filters. nearest.png (Fig. 6): generated digits, the last column
followed by the nearest training image (pixel L2), so a reader sees the model does not copy. sequences.png (Fig. 7):
the canvas over steps, of the model without attention (sequences=) or of draw=. two_digit.png (Fig. 8): samples of
a two-digit MNIST model, and two_digit_sequences.png its drawing over steps. glimpses.png / glimpses.gif (Fig. 5):
the classifier's glimpses on cluttered MNIST. Any DRAW checkpoint serves for the generated figures (draw=,
sequences=, two_digit=; null leaves a figure out); with data=svhn or data=cifar10 the nearest neighbours come from
that data set's training images (the filterbank, zooming, two digits and the classifier are MNIST's, made with
data=mnist only).
"""
import logging
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from scipy import ndimage
from torchvision.utils import save_image

from draw import viz
from draw.app import checkpoint_path
from draw.attention import AttentionWindow, filterbank, read
from draw.config import read_checkpoint
from draw.data import CIFAR10DataModule, MNISTDataModule, SVHNDataModule
from draw.data.cluttered import scenes
from draw.data.mnist import load_mnist
from draw.errors import UserError, exit_on_user_error, exit_with_help_if_asked
from draw.model import image_shape
from draw.module import DRAWModule
from draw.sample import load_module, show_glimpses

log = logging.getLogger("draw")

DEFAULTS = {"out": "docs/figures", "paths": {"data_dir": "data"}, "data": "mnist", "draw": "pretrained:draw_mnist",
            "sequences": None, "two_digit": None, "classifier": "pretrained:glimpse_cluttered_mnist", "n": 8, "seed": 0}
# With data=mnist, Fig. 7 is the shipped model without attention's, Fig. 8 the shipped two-digit model's.
# A second piece of ink this large (pixels above 0.5) is a digit rather than a fragment: in 0.42 of two-digit MNIST's
# images (docs/experiments/two_digit.md).
DIGIT_SIZED = 60
MNIST_DEFAULTS = {"sequences": "pretrained:draw_mnist_noattention", "two_digit": "pretrained:draw_two_digit_mnist"}
# The data sets whose training images the generated ones are compared with (data=).
DATA = {"mnist": MNISTDataModule, "svhn": SVHNDataModule, "cifar10": CIFAR10DataModule}


def window(g_x: float, g_y: float, delta: float, var: float, gamma: float = 1.0) -> AttentionWindow:
    """One window (B = 1) from plain numbers."""
    return AttentionWindow(*(torch.tensor([v], dtype=torch.float32) for v in (g_x, g_y, delta, var, gamma)))


def filters_of(w: AttentionWindow, N: int, height: int, width: int):
    """F_X (1, N, W) and F_Y (1, N, H) of a window (Eqs. 19-26)."""
    offsets = torch.arange(1, N + 1) - N / 2 - 0.5
    return filterbank(w, offsets, torch.arange(1, width + 1.0), torch.arange(1, height + 1.0))


def filters_on_image(image: torch.Tensor, w: AttentionWindow, N: int) -> torch.Tensor:
    """The image (H, W) in grey with each of the window's N x N filters added in red: (3, H, W)."""
    F_x, F_y = filters_of(w, N, *image.shape)
    blobs = F_y[0].sum(0)[:, None] * F_x[0].sum(0)[None, :]  # (H, W): the sum of the N x N separable filters
    rgb = image.expand(3, *image.shape).clone() * 0.6
    rgb[0] += blobs / blobs.max()
    return rgb.clamp(0, 1)


def read_patch(image: torch.Tensor, w: AttentionWindow, N: int) -> torch.Tensor:
    """Eq. 27 on one image (H, W): its N x N glimpse."""
    F_x, F_y = filters_of(w, N, *image.shape)
    return read(image[None, None], w, F_x, F_y)[0, 0]


def write_back(patch: torch.Tensor, w: AttentionWindow, height: int, width: int) -> torch.Tensor:
    """Eq. 29 for a read patch: F_Y^T patch F_X / gamma, the image as the N x N filters saw it, (H, W)."""
    F_x, F_y = filters_of(w, patch.shape[0], height, width)
    return F_y[0].T @ patch @ F_x[0] / w.gamma


def brightest_at_1(image: torch.Tensor) -> torch.Tensor:
    """An image scaled to its own brightest pixel: a read averages, a write spreads, and both dim what they show."""
    return image / image.max().clamp(min=1e-8)


def to_size(image: torch.Tensor, size: int) -> torch.Tensor:
    """(h, w) -> (size, size) by nearest neighbour, for panels side by side."""
    return torch.nn.functional.interpolate(image[None, None], size=(size, size), mode="nearest")[0, 0]


def filterbank_figure(image: torch.Tensor, N: int = 12) -> torch.Tensor:
    """Fig. 3: left, a 3x3 grid of filters on the image; right, N x N patches read at three strides and variances."""
    H, W = image.shape
    cx, cy = (W + 1) / 2, (H + 1) / 2
    grid = filters_on_image(image, window(cx, cy, W / 4, (W / 12) ** 2), 3)
    patches = [read_patch(image, window(cx, cy, delta, var), N) for delta, var in ((W / (2 * N), 0.5), (W / N, 1.0), (W / N, 4.0))]
    panels = [grid] + [to_size(brightest_at_1(p), H).expand(3, H, W) for p in patches]
    return viz.grid(torch.stack(panels), nrow=len(panels))


def zoom_figure(image: torch.Tensor, N: int = 12, strides=(8.0, 4.0, 2.0, 1.0)) -> torch.Tensor:
    """Fig. 4: for each stride, the N x N patch read (top) and the image written back from it (bottom), each scaled
    to its brightest pixel; the original first. image: (100, 100) in [0, 1], the window on its brightest region's centre of mass."""
    H, W = image.shape
    ys, xs = torch.meshgrid(torch.arange(1, H + 1.0), torch.arange(1, W + 1.0), indexing="ij")
    mass = image.sum().clamp(min=1e-8)
    cx, cy = float((image * xs).sum() / mass), float((image * ys).sum() / mass)
    top, bottom = [image], [image]
    for stride in strides:
        w = window(cx, cy, stride, (stride / 2) ** 2)
        patch = read_patch(image, w, N)
        top.append(to_size(brightest_at_1(patch), H))
        bottom.append(brightest_at_1(write_back(patch, w, H, W)))
    return viz.grid(torch.stack(top + bottom), nrow=len(top))


def nearest_neighbours(images: torch.Tensor, pool: torch.Tensor, chunk: int = 4096):
    """For each image (n, ...) the index in pool (P, ...) of its nearest by pixel L2, and that distance: (n,), (n,)."""
    flat = images.flatten(1).float()
    best = torch.full((len(flat),), float("inf")), torch.zeros(len(flat), dtype=torch.long)
    for start in range(0, len(pool), chunk):
        distances = torch.cdist(flat, pool[start:start + chunk].flatten(1).float())  # (n, chunk)
        value, index = distances.min(1)
        better = value < best[0]
        best[0][better], best[1][better] = value[better], index[better] + start
    return best[1], best[0]


def load_draw(ckpt) -> DRAWModule:
    path = checkpoint_path(ckpt, "draw")
    read_checkpoint(path, key="draw")
    return DRAWModule.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()


def training_images(data: str, data_dir: str, module: DRAWModule) -> torch.Tensor:
    """A data set's training images at the model's size: uint8 (N, H, W) or (N, C, H, W)."""
    if data not in DATA:
        raise UserError(f"data={data!r} is not allowed: one of {', '.join(DATA)}")
    cfg = module.model.cfg
    return DATA[data](data_dir=data_dir, height=cfg.height, width=cfg.width).images(train=True)


def generated(module: DRAWModule, n: int) -> torch.Tensor:
    """n images drawn from the prior: every step's canvas, (T, n, [C,] H, W) probabilities, on the CPU."""
    with torch.no_grad():
        canvases, _ = module.model.sample(n)
    return canvases.cpu()


def nearest_figure(module: DRAWModule, training_images: torch.Tensor, n: int) -> torch.Tensor:
    """Fig. 6: n rows of n generated images, each row followed by the training image nearest to its last one."""
    samples = generated(module, n * n)[-1]  # (n*n, [C,] H, W)
    rows = samples.view(n, n, *samples.shape[1:])
    index, _ = nearest_neighbours(rows[:, -1], training_images.float() / 255)
    nearest = (training_images[index].float() / 255).view(n, 1, *samples.shape[1:])
    return viz.grid(torch.cat([rows, nearest], 1).flatten(0, 1), nrow=n + 1)


def sequences_figure(module: DRAWModule, n: int, columns: int = 10) -> torch.Tensor:
    """Fig. 7: n generated images, one per row, over `columns` steps evenly spaced to the last."""
    canvases = generated(module, n)
    T = len(canvases)
    steps = torch.linspace(0, T - 1, min(columns, T)).round().long()
    return viz.steps_picture(canvases[steps].view(len(steps), n, *image_shape(module.model.cfg)))


def second_piece(images: torch.Tensor) -> torch.Tensor:
    """Each grey image's second-largest piece of ink (its pixels above 0.5, 8-connected), in pixels, (n,); 0 for one
    piece or none. The countable part of "two digits": one MNIST digit has about 100-150 such pixels, a fragment
    tens; two digits that touch are one piece."""
    sizes = []
    for ink in (images > 0.5).numpy():
        labels, pieces = ndimage.label(ink, structure=[[1, 1, 1]] * 3)
        sizes.append(sorted(ndimage.sum(ink, labels, range(1, pieces + 1)), reverse=True)[1] if pieces > 1 else 0.0)
    return torch.tensor(sizes, dtype=torch.float32)


def make_figures(cfg) -> Path:
    """Every figure into cfg.out, and index.md with a line on each."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    drawing = load_draw(cfg.draw)
    train_images = training_images(cfg.data, cfg.paths.data_dir, drawing)
    made = {}

    def save(name: str, picture: torch.Tensor, caption: str, scale: int = 3):
        save_image(viz.enlarged(picture, scale), out / name)
        made[name] = caption

    if cfg.data == "mnist":
        test_images = load_mnist(cfg.paths.data_dir, train=False)
        save("filterbank.png", filterbank_figure(to_size(test_images[0].float() / 255, 100)),
             "Fig. 3: a 3x3 grid of filters on a digit (red); 12x12 patches read from it at three strides and variances.", 2)
        scene = scenes(test_images[:1, None], 100, 100, generator=torch.Generator().manual_seed(cfg.seed))[0].float() / 255
        save("zoom.png", zoom_figure(scene),
             "Fig. 4: a 100x100 image; 12x12 patches read with 144 filters at strides 8, 4, 2 and 1 (top) and the image "
             "written back from each through the transposed filters (bottom).", 2)
    save("nearest.png", nearest_figure(drawing, train_images, cfg.n),
         f"Figs. 6, 10, 12: images generated by {cfg.draw}; the last column is the {cfg.data} training image nearest "
         "(pixel L2) to each row's last one: the model does not copy.")
    sequences = cfg.sequences or cfg.draw
    save("sequences.png", sequences_figure(load_draw(sequences), cfg.n),
         f"Figs. 7, 9: {sequences} drawing, one image a row, the canvas at evenly spaced steps to the last.")
    if cfg.two_digit and cfg.data == "mnist":
        two_digit = load_draw(cfg.two_digit)
        samples = generated(two_digit, cfg.n * cfg.n)[-1]  # (n*n, H, W)
        digit_sized = int((second_piece(samples) >= DIGIT_SIZED).sum())
        save("two_digit.png", viz.grid(samples, nrow=cfg.n),
             f"Fig. 8: two-digit images generated by {cfg.two_digit}; {digit_sized} of the {len(samples)} have a second "
             f"digit-sized piece of ink (>= {DIGIT_SIZED} pixels; 0.42 of the data's images).", 2)
        save("two_digit_sequences.png", sequences_figure(two_digit, max(1, cfg.n // 2)),
             f"{cfg.two_digit} drawing, one image a row, the canvas at evenly spaced steps to the last.", 2)
    if cfg.classifier and cfg.data == "mnist":
        classifier = load_module(cfg.classifier, mode="glimpses")
        glimpse_cfg = OmegaConf.create({"data": {"data_dir": cfg.paths.data_dir}, "scale": 2, "device": "cpu"})
        show_glimpses(classifier.module, classifier.data_settings, glimpse_cfg, 4, out)
        made["glimpses.gif"] = f"Fig. 5: {cfg.classifier} classifying cluttered MNIST: each glimpse's window and what it saw."
        made["misclassified.png"] = "The first test images it gets wrong."
    lines = ["# Figures", "", f"Made by `python -m draw.figures` ({', '.join(f'{k}={v}' for k, v in sorted(_flat(cfg).items()))}).", ""]
    lines += [f"- [{name}]({name}): {caption}" for name, caption in made.items()]
    (out / "index.md").write_text("\n".join(lines) + "\n")
    log.info(f"{len(made)} figures and index.md written to {out}")
    return out


def _flat(cfg) -> dict:
    return {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if not isinstance(v, dict)}


def figures_config(argv):
    """The command line over DEFAULTS, and over MNIST_DEFAULTS too with data=mnist."""
    given = OmegaConf.from_dotlist(argv)
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), given)
    return OmegaConf.merge(cfg, MNIST_DEFAULTS, given) if cfg.data == "mnist" else cfg


@exit_on_user_error
def main(argv) -> None:
    exit_with_help_if_asked(argv, __doc__)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_figures(figures_config(argv))


if __name__ == "__main__":
    main(sys.argv[1:])

