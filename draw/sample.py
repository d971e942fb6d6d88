"""Watch a trained DRAW draw: prior samples or reconstructions as a grid, a step picture, a GIF and the raw
canvases; or watch a trained classifier look (task=classify): its glimpses on test images. What sample.py
runs, importable so tests can call it in-process."""
import logging
from pathlib import Path
from typing import NamedTuple, Optional, Union

import numpy as np
import torch
from omegaconf import DictConfig
from torchvision.utils import save_image

from draw import viz
from draw.app import PRETRAINED_DIR, checkpoint_path
from draw.classifier import first_misclassified
from draw.classifier_module import ClassifierModule
from draw.config import check_cuda, read_checkpoint, require_int
from draw.data import ClutteredMNISTDataModule, MNISTDataModule
from draw.errors import UserError
from draw.model import image_shape
from draw.module import DRAWModule

# What ships with draw: the paper's MNIST DRAW, and the 8-glimpse cluttered MNIST classifier (mode=glimpses).
PRETRAINED = PRETRAINED_DIR / "draw_mnist.ckpt"
PRETRAINED_CLASSIFIER = PRETRAINED_DIR / "glimpse_cluttered_mnist.ckpt"
DRAW_MODES = ("prior", "reconstruct")
CLASSIFIER_MODES = ("glimpses",)
DEFAULT_N = {"prior": 64, "reconstruct": 64, "glimpses": 8}


class Loaded(NamedTuple):
    module: Union[DRAWModule, ClassifierModule]  # in eval mode
    mode: str  # what to show: the mode asked for, checked against the checkpoint, or its kind's first mode
    data_settings: dict  # the training data module's hyper-parameters ({} in checkpoints from before they were kept)


def load_module(ckpt_path, device: str = "cpu", mode: Optional[str] = None, output_dir: str = "outputs") -> Loaded:
    """The LightningModule a checkpoint alone rebuilds (DRAW's, or a classifier's) and how to show it. Without a
    checkpoint, the one that ships for the mode; ckpt_path=last and pretrained:NAME as draw.app.checkpoint_path says."""
    if mode is not None and mode not in DRAW_MODES + CLASSIFIER_MODES:
        raise UserError(f"mode={mode!r} is not a mode: use one of {', '.join(DRAW_MODES + CLASSIFIER_MODES)}")
    path = checkpoint_path(ckpt_path, "ckpt_path", output_dir) or (PRETRAINED_CLASSIFIER if mode in CLASSIFIER_MODES else PRETRAINED)
    checkpoint = read_checkpoint(path)  # one line for a missing, truncated or foreign file
    is_classifier = "architecture" in checkpoint["hyper_parameters"]["model"]
    modes = CLASSIFIER_MODES if is_classifier else DRAW_MODES
    if mode is not None and mode not in modes:
        kind = "a classifier's" if is_classifier else "DRAW's"
        raise UserError(f"mode={mode} does not apply to ckpt_path={path}, {kind} checkpoint: use mode={' or mode='.join(modes)}")
    module = (ClassifierModule if is_classifier else DRAWModule).load_from_checkpoint(path, map_location=device, weights_only=True)
    return Loaded(module.eval(), mode or modes[0], checkpoint.get("datamodule_hyper_parameters", {}))


def test_images(data_dir: str, n: int) -> torch.Tensor:
    """The first n test images, binarized as the test set is (fixed)."""
    datamodule = MNISTDataModule(data_dir=data_dir)
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule.datasets["test"].images[:n]


def window_arrays(prefix: str, windows) -> dict:
    """T windows of (n,) fields -> {prefix_g_x: (T, n), ...}; nothing without attention."""
    if not windows or windows[0] is None:
        return {}
    return {f"{prefix}_{name}": torch.stack([getattr(w, name) for w in windows]).cpu().numpy() for name in windows[0]._fields}


def sample(cfg: DictConfig, output_dir: str) -> Path:
    """Write samples.png, steps.png, samples.gif and canvases.npz into output_dir; for a classifier, its glimpses."""
    if cfg.n is not None:
        require_int("n", cfg.n, 1)
    if cfg.T is not None:
        require_int("T", cfg.T, 1)
    require_int("scale", cfg.scale, 1)
    check_cuda("device", cfg.device)
    out = Path(output_dir)
    module, mode, data_settings = load_module(cfg.ckpt_path, cfg.device, cfg.mode, cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = cfg.n or DEFAULT_N[mode]
    if mode == "glimpses":
        return show_glimpses(module, data_settings, cfg, n, out)
    torch.manual_seed(cfg.seed)
    model = module.model
    originals = None
    with torch.no_grad():
        if mode == "prior":
            canvases, write_windows = model.sample(n, T=cfg.T)  # (T, n, [C,] H, W)
            read_windows = []
        else:
            if (model.cfg.channels, model.cfg.height, model.cfg.width) != (1, 28, 28):
                raise UserError("mode=reconstruct reads MNIST's test images: this model draws "
                                f"{model.cfg.channels} x {model.cfg.height} x {model.cfg.width} images; use mode=prior")
            originals = test_images(cfg.data.data_dir, n).to(cfg.device)  # (n, H, W)
            trace = model(originals, record=True, T=cfg.T)
            canvases = torch.sigmoid(torch.stack(trace.canvases)).view(-1, len(originals), *image_shape(model.cfg))
            read_windows, write_windows = trace.read_windows, trace.write_windows
    canvases, n = canvases.cpu(), canvases.shape[1]
    originals = None if originals is None else originals.cpu()

    save_image(viz.enlarged(viz.grid_of(canvases[-1], originals), cfg.scale), out / "samples.png")
    save_image(viz.enlarged(viz.steps_picture(canvases, extra=originals), cfg.scale), out / "steps.png")
    frames = viz.frames(
        canvases,
        read_windows if cfg.boxes else (),
        write_windows if cfg.boxes else (),
        read_n=model.cfg.read_n,
        write_n=model.cfg.write_n,
        extra=originals,
        scale=cfg.scale,
    )
    viz.save_gif(frames, out / "samples.gif")
    arrays = {"canvases": canvases.numpy().astype(np.float32), **window_arrays("read", read_windows),
              **window_arrays("write", write_windows)}
    if originals is not None:
        arrays["originals"] = originals.numpy().astype(np.float32)
    np.savez_compressed(out / "canvases.npz", **arrays)
    logging.getLogger("draw").info(f"{mode}: {n} images over {len(canvases)} steps written to {out}")
    return out


def show_glimpses(module: ClassifierModule, data_settings: dict, cfg: DictConfig, n: int, out: Path) -> Path:
    """A classifier's first n test images with its glimpses (glimpses.png, glimpses.gif, one glimpse more each
    frame), and its first n misclassified test images (misclassified.png). The test images are remade from the
    checkpoint's data settings (their fixed seed), so they are the images its test error was measured on."""
    settings = {**data_settings, "data_dir": cfg.data.data_dir, "batch_size": 500}
    datamodule = ClutteredMNISTDataModule(**settings)
    datamodule.prepare_data()
    datamodule.setup("test")
    x, y = next(iter(datamodule.test_dataloader()))
    first = (x[:n].to(cfg.device), y[:n].to(cfg.device))
    wrong_x, wrong_y = first_misclassified(module.model, datamodule.test_dataloader(), n, cfg.device)
    frames, predicted = viz.classify_and_show(module.model, *first, scale=cfg.scale, every_glimpse=True)
    frames[-1].save(out / "glimpses.png")
    if module.hparams.model["architecture"] == "glimpse":  # a convolutional baseline has no glimpses to animate
        viz.save_gif(frames, out / "glimpses.gif", frame_ms=700, hold_ms=2000)
    if len(wrong_x):
        (wrong_picture,), _ = viz.classify_and_show(module.model, wrong_x, wrong_y, scale=cfg.scale)
        wrong_picture.save(out / "misclassified.png")
    right = int((predicted == first[1].cpu()).sum())
    logging.getLogger("draw").info(f"classify: {right} of {len(predicted)} test images right, their glimpses and "
                                   f"{len(wrong_x)} misclassified ones written to {out}")
    return out
