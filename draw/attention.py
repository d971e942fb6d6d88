"""DRAW's attention (Section 3.2 of Gregor et al. 2015): a grid of N x N Gaussian filters placed by five
numbers, the filterbank matrices F_X and F_Y, and where a window starts. Plain PyTorch; used by DRAW's read
and write (draw/model.py) and by anything else that looks at an image through the same windows.

Shapes: B batch, H x W image (pixel coordinates run 1..W and 1..H as Eqs. 22-23 assume), N glimpse size.
"""
import math
from typing import NamedTuple

import torch
import torch.nn as nn

# exp() of an attention parameter stays inside [e^-10, e^10]: an extreme decoder state cannot make a
# variance, stride or intensity of 0 or inf (and so a NaN) on the forward path.
LOG_CLAMP = 10.0


class AttentionWindow(NamedTuple):
    """One attention window per image, each field (B,), in pixel units."""

    g_x: torch.Tensor  # grid centre, x
    g_y: torch.Tensor  # grid centre, y
    delta: torch.Tensor  # stride between filter centres
    var: torch.Tensor  # isotropic filter variance sigma^2
    gamma: torch.Tensor  # intensity


def attention_window(params: torch.Tensor, N: int, height: int, width: int) -> AttentionWindow:
    """Eqs. 21-24: the decoder's five numbers (B, 5) -> a window on the image."""
    gx_tilde, gy_tilde, log_var, log_delta_tilde, log_gamma = params.unbind(1)  # Eq. 21
    g_x = (width + 1) / 2 * (gx_tilde + 1)  # Eq. 22
    g_y = (height + 1) / 2 * (gy_tilde + 1)  # Eq. 23
    # Eq. 24; with N = 1 there is one filter at the centre and the stride is unused.
    delta = (max(height, width) - 1) / max(N - 1, 1) * log_delta_tilde.clamp(-LOG_CLAMP, LOG_CLAMP).exp()
    var = log_var.clamp(-LOG_CLAMP, LOG_CLAMP).exp()
    gamma = log_gamma.clamp(-LOG_CLAMP, LOG_CLAMP).exp()
    return AttentionWindow(g_x, g_y, delta, var, gamma)


def gaussian_filters(coords: torch.Tensor, centres: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Eqs. 25-26: rows of Gaussians over pixel coordinates (P,), centres (B, N) -> (B, N, P), rows sum to 1.

    exp(-d^2 / 2 var) / Z is a softmax over pixels: written so, a narrow window between pixels or off the
    image cannot underflow to 0/0, and every row sums to 1 as the paper's Z makes it.
    """
    return torch.softmax(-((coords - centres.unsqueeze(-1)) ** 2) / (2 * var[:, None, None]), dim=-1)


def filterbank(window: AttentionWindow, offsets: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor):
    """Filter matrices F_X (B, N, W) and F_Y (B, N, H) of one window.

    offsets (N,) holds i - N/2 - 0.5 for i = 1..N; xs (W,) and ys (H,) hold the pixel coordinates 1..W, 1..H.
    """
    mu_x = window.g_x.unsqueeze(1) + offsets * window.delta.unsqueeze(1)  # Eq. 19, (B, N)
    mu_y = window.g_y.unsqueeze(1) + offsets * window.delta.unsqueeze(1)  # Eq. 20, (B, N)
    return gaussian_filters(xs, mu_x, window.var), gaussian_filters(ys, mu_y, window.var)  # Eqs. 25-26


def read(images: torch.Tensor, window: AttentionWindow, F_x: torch.Tensor, F_y: torch.Tensor) -> torch.Tensor:
    """Eq. 27 for each of C images per example (an image and DRAW's error image, or colour channels):
    gamma F_Y x F_X^T, (B, C, H, W) -> (B, C, N, N)."""
    glimpses = F_y.unsqueeze(1) @ images @ F_x.transpose(1, 2).unsqueeze(1)  # (B, C, N, N)
    return window.gamma[:, None, None, None] * glimpses


def init_window(params: nn.Linear, N: int, height: int, width: int, stride=None, var=None, gamma=None) -> None:
    """Start a window's filters `stride` pixels apart, with variance `var` (pixels^2) and intensity `gamma`, by
    the biases of Eq. 21's log delta~, log sigma^2 and log gamma; None leaves that bias as nn.Linear made it.
    The weights stay as they are, so h_dec moves the window from there. Left alone, the grid starts spanning
    the whole image (delta ~ (max(H, W) - 1) / (N - 1), Eq. 24 with log delta~ ~ 0) with filters of variance
    ~1 and gamma ~1: a 2 x 2 read then sees four pixels on the border, where MNIST is blank."""
    with torch.no_grad():
        if stride is not None:
            params.bias[3] = math.log(stride / ((max(height, width) - 1) / max(N - 1, 1)))  # Eq. 24 solved for log delta~
        if var is not None:
            params.bias[2] = math.log(var)
        if gamma is not None:
            params.bias[4] = math.log(gamma)


class Filterbank(nn.Module):
    """The constant grids of an N x N filterbank on an H x W image, made once, and the window -> filters map."""

    def __init__(self, N: int, height: int, width: int):
        super().__init__()
        self.N, self.height, self.width = N, height, width
        self.register_buffer("offsets", torch.arange(1, N + 1) - N / 2 - 0.5, persistent=False)
        self.register_buffer("xs", torch.arange(1, width + 1, dtype=torch.float32), persistent=False)
        self.register_buffer("ys", torch.arange(1, height + 1, dtype=torch.float32), persistent=False)

    def forward(self, params: torch.Tensor):
        window = attention_window(params, self.N, self.height, self.width)
        F_x, F_y = filterbank(window, self.offsets, self.xs, self.ys)
        return window, F_x, F_y
