"""Pictures of DRAW drawing: grids, step pictures, GIFs and attention boxes. Images are probabilities in [0, 1]."""
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from draw.attention import AttentionWindow

READ_COLOUR = (230, 60, 60)  # red, as in the paper's figures
WRITE_COLOUR = (60, 200, 60)  # green
PAD = 2  # pixels between the cells of a grid


def grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """(n, H, W) -> one (3, H', W') grid image, nrow images per row."""
    return make_grid(images.unsqueeze(1).float().clamp(0, 1), nrow=nrow, padding=PAD, pad_value=0.5)


def layout(images: torch.Tensor, originals: Optional[torch.Tensor] = None):
    """(n, H, W) images -> the cells of their grid and its row length: as square as n allows, each
    original (n, H, W), if given, left of its image."""
    nrow = max(1, int(np.ceil(np.sqrt(len(images)))))
    if originals is None:
        return images, nrow
    return torch.stack([originals, images], 1).flatten(0, 1), 2 * nrow


def grid_of(images: torch.Tensor, originals: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The grid image of `layout`."""
    return grid(*layout(images, originals))


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> an RGB PIL image."""
    return Image.fromarray((image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy())


def steps_picture(canvases: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """canvases (T, n, H, W) -> one row per image, one column per step; `extra` (n, H, W) is a last column
    (the originals, say)."""
    columns = canvases.transpose(0, 1)  # (n, T, H, W)
    if extra is not None:
        columns = torch.cat([columns, extra.unsqueeze(1)], dim=1)
    return grid(columns.flatten(0, 1), nrow=columns.shape[1])


def draw_window(draw: ImageDraw.ImageDraw, window: AttentionWindow, i: int, N: int, cell, scale: int, colour):
    """The square spanned by image i's N x N filters (N strides wide), clipped to its cell (x0, y0, W, H)."""
    x0, y0, W, H = cell
    half = N * window.delta[i].item() / 2
    # Pixel coordinate k is the centre of the k-th pixel, which spans [k - 1, k) in image space.
    cx, cy = window.g_x[i].item() - 0.5, window.g_y[i].item() - 0.5
    clip = lambda v, size: min(max(v, 0.0), size) * scale  # noqa: E731
    box = [x0 + clip(cx - half, W), y0 + clip(cy - half, H), x0 + clip(cx + half, W) - 1, y0 + clip(cy + half, H) - 1]
    if box[2] > box[0] and box[3] > box[1]:  # a window wholly off the image is not drawn
        draw.rectangle(box, outline=colour, width=max(2, scale // 2))  # 1 px is lost at a GIF's size


def frames(
    canvases: torch.Tensor,
    read_windows: Sequence[Optional[AttentionWindow]] = (),
    write_windows: Sequence[Optional[AttentionWindow]] = (),
    read_n: int = 0,
    write_n: int = 0,
    extra: Optional[torch.Tensor] = None,
    scale: int = 1,
) -> list:
    """canvases (T, n, H, W) -> T PIL frames, each a grid of the n canvases at that step, enlarged `scale`
    times; windows given are drawn as boxes (read red, write green). `extra` (n, H, W) sits beside each
    canvas (the originals of a reconstruction), and the read boxes are drawn on it too: a read looks at the
    image and the canvas's error alike."""
    T, n, H, W = canvases.shape
    per_image = 1 if extra is None else 2
    canvas_cells = [[(i + 1) * per_image - 1] for i in range(n)]
    image_cells = [list(range(i * per_image, (i + 1) * per_image)) for i in range(n)]  # the original's too
    result = []
    for t in range(T):
        cells, nrow = layout(canvases[t], extra)
        image = to_pil(grid(cells, nrow))
        if scale > 1:
            image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        draw = ImageDraw.Draw(image)
        for windows, N, colour, cells_of in ((read_windows, read_n, READ_COLOUR, image_cells),
                                             (write_windows, write_n, WRITE_COLOUR, canvas_cells)):
            window = windows[t] if t < len(windows) else None
            if window is None:
                continue
            for i in range(n):
                for cell in cells_of[i]:
                    x0, y0 = scale * (PAD + (cell % nrow) * (W + PAD)), scale * (PAD + (cell // nrow) * (H + PAD))
                    draw_window(draw, window, i, N, (x0, y0, W, H), scale, colour)
        result.append(image)
    return result


def save_gif(images: list, path: Path, frame_ms: int = 100, hold_ms: int = 1500) -> None:
    """One frame per step; the last frame is held for hold_ms (a longer duration, not extra frames)."""
    durations = [frame_ms] * (len(images) - 1) + [hold_ms]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=False)
