"""Watch a trained DRAW draw: prior samples or reconstructions as a grid, a step picture, a GIF and the raw
canvases. What sample.py runs, importable so tests can call it in-process."""
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torchvision.utils import save_image

from draw import viz
from draw.config import check_cuda, read_checkpoint, require_int
from draw.data import MNISTDataModule
from draw.errors import UserError
from draw.module import DRAWModule

PRETRAINED = Path(__file__).parent / "pretrained" / "draw_mnist.ckpt"
MODES = ("prior", "reconstruct")


def load_module(ckpt_path, device: str = "cpu") -> DRAWModule:
    """A DRAWModule rebuilt from a checkpoint alone, in eval mode."""
    path = Path(ckpt_path) if ckpt_path else PRETRAINED
    read_checkpoint(path)  # one line for a missing, truncated or foreign file
    module = DRAWModule.load_from_checkpoint(path, map_location=device, weights_only=True)
    return module.eval()


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
    """Write samples.png, steps.png, samples.gif and canvases.npz into output_dir."""
    if cfg.mode not in MODES:
        raise UserError(f"mode={cfg.mode!r} is not a mode: use one of {', '.join(MODES)}")
    require_int("n", cfg.n, 1)
    if cfg.T is not None:
        require_int("T", cfg.T, 1)
    require_int("scale", cfg.scale, 1)
    check_cuda("device", cfg.device)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    module = load_module(cfg.ckpt_path, cfg.device)
    model = module.model
    H, W = model.cfg.height, model.cfg.width
    originals = None
    with torch.no_grad():
        if cfg.mode == "prior":
            canvases, write_windows = model.sample(cfg.n, T=cfg.T)  # (T, n, H, W)
            read_windows = []
        else:
            originals = test_images(cfg.data.data_dir, cfg.n).to(cfg.device)  # (n, H, W)
            trace = model(originals, record=True, T=cfg.T)
            canvases = torch.sigmoid(torch.stack(trace.canvases)).view(-1, len(originals), H, W)
            read_windows, write_windows = trace.read_windows, trace.write_windows
    canvases, n = canvases.cpu(), canvases.shape[1]
    originals = None if originals is None else originals.cpu()

    save_image(viz.grid_of(canvases[-1], originals), out / "samples.png")
    save_image(viz.steps_picture(canvases, extra=originals), out / "steps.png")
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
    arrays = {"canvases": canvases.numpy().astype(np.float32), **window_arrays("read", read_windows), **window_arrays("write", write_windows)}
    if originals is not None:
        arrays["originals"] = originals.numpy().astype(np.float32)
    np.savez_compressed(out / "canvases.npz", **arrays)
    logging.getLogger("draw").info(f"{cfg.mode}: {n} images over {len(canvases)} steps written to {out}")
    return out
