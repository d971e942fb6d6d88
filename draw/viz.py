"""Pictures of DRAW drawing: grids, step pictures, GIFs and attention boxes. Images are probabilities in [0, 1],
each (H, W) grey or (C, H, W) colour."""
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from draw.attention import AttentionWindow

READ_COLOUR = (230, 60, 60)  # red, as in the paper's figures
WRITE_COLOUR = (60, 200, 60)  # green
PAD = 2  # pixels between the cells of a grid


def grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """(n, H, W) or (n, C, H, W) -> one (3, H', W') grid image, nrow images per row."""
    images = images if images.dim() == 4 else images.unsqueeze(1)
    return make_grid(images.float().clamp(0, 1), nrow=nrow, padding=PAD, pad_value=0.5)


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


def enlarged(image: torch.Tensor, scale: int) -> torch.Tensor:
    """(3, H, W) -> (3, H * scale, W * scale), each pixel a scale x scale square."""
    return image.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)


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
    """canvases (T, n, [C,] H, W) -> T PIL frames, each a grid of the n canvases at that step, enlarged `scale`
    times; windows given are drawn as boxes (read red, write green). `extra` (n, H, W) sits beside each
    canvas (the originals of a reconstruction), and the read boxes are drawn on it too: a read looks at the
    image and the canvas's error alike."""
    (T, n), (H, W) = canvases.shape[:2], canvases.shape[-2:]
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


# ----------------------------------------------------------------------------------------------------
# Glimpses of a classifier (Section 4.1): where each glimpse looked, and what it saw.

GLIMPSE_COLOURS = [(255, 230, 0), (255, 160, 0), (255, 90, 0), (230, 30, 30), (200, 0, 120), (150, 0, 200), (80, 60, 255), (0, 150, 255)]
def label_font(height: int) -> ImageFont.ImageFont:
    """A font whose letters are about `height` pixels tall (Pillow's own, scalable where FreeType is present)."""
    try:
        return ImageFont.load_default(size=height)
    except (TypeError, ImportError):  # Pillow < 10.1, or without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def glimpse_colour(t: int, count: int):
    """Glimpse t of count: yellow for the first, through red, to blue for the last (of up to 8; cycled beyond)."""
    step = max(1, len(GLIMPSE_COLOURS) // max(count, 1))
    return GLIMPSE_COLOURS[(t * step) % len(GLIMPSE_COLOURS)]


def glimpse_rows(images: torch.Tensor, windows: Sequence[AttentionWindow], contents: Sequence[torch.Tensor], N: int,
                 predicted: torch.Tensor, labels: torch.Tensor, shown: Optional[int] = None, scale: int = 2) -> Image.Image:
    """One row per image (n, H, W): the image with the windows of the first `shown` glimpses drawn and numbered,
    then what each of those glimpses saw (N x N, enlarged to the image's height, each scaled to its own
    brightest pixel), with "predicted (true)" above the image, red where they differ. contents: (n, N, N) per glimpse."""
    n, H, W = images.shape
    count = len(windows)
    shown = count if shown is None else shown
    text_height = max(12, H * scale // 8)  # labels readable at the picture's own size
    font, label_height = label_font(text_height), text_height + 4
    cell_w, cell_h = W * scale + 2 * PAD, H * scale + label_height + PAD
    canvas = Image.new("RGB", (cell_w * (1 + count), cell_h * n), (128, 128, 128))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        top = i * cell_h + label_height
        image = to_pil(images[i].expand(3, H, W)).resize((W * scale, H * scale), Image.NEAREST)
        canvas.paste(image, (PAD, top))
        right = int(predicted[i]) == int(labels[i])
        label_colour = (255, 255, 255) if right else (255, 40, 40)
        draw.text((PAD, i * cell_h), f"{int(predicted[i])} (true {int(labels[i])})", fill=label_colour, font=font)
        for t in range(shown):
            colour = glimpse_colour(t, count)
            draw_window(draw, windows[t], i, N, (PAD, top, W, H), scale, colour)
            g_x, g_y = windows[t].g_x[i].item() - 0.5, windows[t].g_y[i].item() - 0.5
            x_text = PAD + min(max(g_x * scale, 0), W * scale - text_height)
            y_text = top + min(max(g_y * scale - text_height // 2, 0), H * scale - text_height)
            draw.text((x_text, y_text), str(t + 1), fill=colour, font=font)
            seen = contents[t][i]
            seen = seen / seen.max().clamp(min=1e-8)
            patch = to_pil(seen.expand(3, N, N)).resize((W * scale, H * scale), Image.NEAREST)
            left = (1 + t) * cell_w + PAD
            canvas.paste(patch, (left, top))
            draw.text((left, i * cell_h), str(t + 1), fill=colour, font=font)
    return canvas


def classify_and_show(model, x: torch.Tensor, y: torch.Tensor, scale: int = 2, every_glimpse: bool = False):
    """Run a classifier (draw/classifier.py) on images x (n, H, W) with labels y (n,): its glimpse_rows pictures
    and its predictions (n,). The pictures: the whole one alone, or with every_glimpse one per glimpse (picture t
    shows glimpses 1..t, so the last is the whole one: a GIF's frames)."""
    with torch.no_grad():
        out = model(x, record=True)
    predicted = out.logits.argmax(1).cpu()
    args = (x.cpu(), out.windows, [g.cpu() for g in out.glimpses], getattr(model.cfg, "read_n", 0), predicted, y.cpu())
    count = len(out.windows)
    shown = range(1, count + 1) if every_glimpse and count else [count]
    return [glimpse_rows(*args, shown=t, scale=scale) for t in shown], predicted
