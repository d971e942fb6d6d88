"""DRAW (Gregor et al. 2015, "DRAW: A Recurrent Neural Network For Image Generation", arXiv 1502.04623).

Plain PyTorch, no Lightning or Hydra. Equation numbers are the paper's; the attention windows themselves
(Section 3.2: Eqs. 19-26 and where a window starts) are in draw/attention.py. Shapes: B batch, C channels
(1 grey, 3 colour), H x W image (the paper's B x A; pixel coordinates run 1..W and 1..H as Eqs. 22-23 assume),
N glimpse size, Z latent size, T steps. The canvas is kept flat, (B, C*H*W), and viewed as (B, C, H, W) where
attention needs it; for colour, read and write apply the same window to every channel, as the paper does.
"""
import math
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from draw.attention import AttentionWindow, Filterbank, init_window, read


@dataclass
class DRAWConfig:
    height: int = 28
    width: int = 28
    channels: int = 1  # a checkpoint from before colour has none: grey
    T: int = 64
    z_size: int = 100
    enc_size: int = 256
    dec_size: int = 256
    read_attention: bool = True
    write_attention: bool = True
    read_n: int = 2
    write_n: int = 5
    # Where each window starts before training moves it (init_window): None keeps nn.Linear's own start.
    read_init: dict = field(default_factory=lambda: {"stride": None, "var": None, "gamma": None})
    write_init: dict = field(default_factory=lambda: {"stride": None, "var": None, "gamma": None})
    # The LSTMs' forget-gate bias at the start (None: nn.LSTMCell's own, near 0): 1 keeps the cells' memory from
    # the first step (Gers et al. 2000; Jozefowicz et al. 2015), which the attention model learns faster with.
    forget_bias: Optional[float] = None
    # Beyond the paper, whose prior is N(0, I) at every step (Eq. 13): a prior p(z_t | h_dec_{t-1}) = N(mu_t^p, sigma_t^p)
    # learned from the decoder's state, as in the authors' later convolutional DRAW (Gregor et al. 2016). It starts
    # as N(0, I) (weights zero), so a paper model's weights start it with their own bound and samples.
    learned_prior: bool = False
    # With learned_prior, a hidden layer of this many tanh units beside the linear map (0: the linear map alone), its
    # output zero at the start, so that a linear prior's weights start it where they were.
    prior_hidden: int = 0


# ----------------------------------------------------------------------------------------------------
# Read and write. Each read maps (x, x_hat, h_dec_prev) to (r, window); each write maps h_dec to
# (canvas update (B, C*H*W), window). The window is None without attention.


def image_shape(cfg: DRAWConfig) -> tuple:
    """One image's shape as the model hands it out: (H, W) for grey images, (C, H, W) for colour."""
    return (cfg.height, cfg.width) if cfg.channels == 1 else (cfg.channels, cfg.height, cfg.width)


class Read(nn.Module):
    """Eq. 17: no attention, [x, x_hat], the whole image and the error image.

    x is the same at every step, so the encoder projects it once per sequence (`fixed`, `fixed_size`
    columns) and each step's read returns x_hat alone: the same gates, a third fewer FLOPs."""

    def __init__(self, cfg: DRAWConfig):
        super().__init__()
        self.fixed_size = self.out_size = cfg.channels * cfg.height * cfg.width

    def fixed(self, x):
        return x  # (B, C*H*W)

    def forward(self, x, x_hat, h_dec_prev):
        return x_hat, None  # (B, C*H*W)


class AttentiveRead(nn.Module):
    """Eq. 27: gamma [F_Y x F_X^T, F_Y x_hat F_X^T], the window placed by h_dec_{t-1}, on every channel."""

    def __init__(self, cfg: DRAWConfig):
        super().__init__()
        self.shape = (2 * cfg.channels, cfg.height, cfg.width)
        self.fixed_size = 0  # every glimpse depends on the step
        self.out_size = 2 * cfg.channels * cfg.read_n * cfg.read_n
        self.params = nn.Linear(cfg.dec_size, 5)  # Eq. 21
        self.filterbank = Filterbank(cfg.read_n, cfg.height, cfg.width)
        init_window(self.params, cfg.read_n, cfg.height, cfg.width, **cfg.read_init)

    def forward(self, x, x_hat, h_dec_prev):
        window, F_x, F_y = self.filterbank(self.params(h_dec_prev))  # (B, N, W), (B, N, H)
        images = torch.stack([x, x_hat], dim=1).view(-1, *self.shape)  # (B, 2*C, H, W)
        return read(images, window, F_x, F_y).flatten(1), window  # Eq. 27, (B, 2*C*N*N)


class Write(nn.Module):
    """Eq. 18: no attention, a linear map from h_dec to the whole canvas."""

    def __init__(self, cfg: DRAWConfig):
        super().__init__()
        self.canvas = nn.Linear(cfg.dec_size, cfg.channels * cfg.height * cfg.width)

    def forward(self, h_dec):
        return self.canvas(h_dec), None  # (B, C*H*W)


class AttentiveWrite(nn.Module):
    """Eqs. 28-29: an N x N patch w_t (one per channel) written through the transposed filterbank, scaled by 1/gamma."""

    def __init__(self, cfg: DRAWConfig):
        super().__init__()
        self.N, self.C = cfg.write_n, cfg.channels
        # Eq. 21's five window parameters and Eq. 28's patch both come from h_dec_t: one matmul.
        self.params_and_patch = nn.Linear(cfg.dec_size, 5 + self.C * self.N * self.N)
        self.filterbank = Filterbank(cfg.write_n, cfg.height, cfg.width)
        init_window(self.params_and_patch, cfg.write_n, cfg.height, cfg.width, **cfg.write_init)

    def forward(self, h_dec):
        params, patch = self.params_and_patch(h_dec).split([5, self.C * self.N * self.N], dim=1)
        window, F_x, F_y = self.filterbank(params)  # (B, N, W), (B, N, H)
        w = patch.view(-1, self.C, self.N, self.N)  # Eq. 28, (B, C, N, N)
        update = F_y.transpose(1, 2).unsqueeze(1) @ w @ F_x.unsqueeze(1) / window.gamma[:, None, None, None]  # Eq. 29, (B, C, H, W)
        return update.flatten(1), window


# ----------------------------------------------------------------------------------------------------
# Losses


def gaussian_kl(mu: torch.Tensor, log_sigma: torch.Tensor, prior: Optional[tuple] = None) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent units, (B, Z) -> (B,).

    Eq. 11 summed over one step: 1/2 (mu^2 + sigma^2 - log sigma^2) - |z|/2. (The paper's Eq. 11 prints
    the constant as T/2; summed over T steps it is T|z|/2.) With a learned prior (mu_p, log_sigma_p), each (B, Z):
    KL(N(mu, sigma^2) || N(mu_p, sigma_p^2)) = log sigma_p/sigma + (sigma^2 + (mu - mu_p)^2) / 2 sigma_p^2 - 1/2.
    """
    if prior is None:
        return 0.5 * (mu.pow(2) + (2 * log_sigma).exp() - 2 * log_sigma - 1).sum(1)
    mu_p, log_sigma_p = prior
    spread = ((2 * log_sigma).exp() + (mu - mu_p).pow(2)) * (-2 * log_sigma_p).exp()
    return (log_sigma_p - log_sigma + 0.5 * (spread - 1)).sum(1)


@dataclass
class DRAWOutput:
    lx: torch.Tensor  # (B,) reconstruction loss, nats, Eq. 9
    lz: torch.Tensor  # (B,) latent loss, nats, Eq. 10
    kl_steps: torch.Tensor  # (B, T) the KL of each step; lz is its sum over T
    # Filled with record=True: every step's canvas logits, latents and attention windows.
    canvases: list = field(default_factory=list)  # T x (B, C*H*W)
    latents: list = field(default_factory=list)  # T x (B, Z)
    posteriors: list = field(default_factory=list)  # T x (mu, log_sigma), each (B, Z)
    priors: list = field(default_factory=list)  # T x (mu_p, log_sigma_p), each (B, Z); None for N(0, I)
    read_windows: list = field(default_factory=list)  # T x AttentionWindow (or None)
    write_windows: list = field(default_factory=list)  # T x AttentionWindow (or None)

    @property
    def nll_bound(self) -> torch.Tensor:
        """The negative ELBO per image, Lx + Lz (Eq. 12 before the average), (B,)."""
        return self.lx + self.lz


# ----------------------------------------------------------------------------------------------------
# The model


class StepRecording(NamedTuple):
    """What a step shows of itself (for pictures and the importance-weighted bound)."""

    canvas: torch.Tensor  # (B, C*H*W) c_t
    z: torch.Tensor  # (B, Z)
    mu: torch.Tensor  # (B, Z)
    log_sigma: torch.Tensor  # (B, Z)
    prior: Optional[tuple]  # (mu_p, log_sigma_p), each (B, Z); None for N(0, I)
    read_window: Optional[AttentionWindow]
    write_window: Optional[AttentionWindow]


class StepOutput(NamedTuple):
    kl: torch.Tensor  # (B,) this step's term of Eq. 10
    enc_input: torch.Tensor  # the encoder's input at this step, detached (for StepwiseLinear)
    dec_input: torch.Tensor  # the decoder's
    recording: Optional[StepRecording]


def lstm_step(gates: torch.Tensor, c: torch.Tensor):
    """One LSTM step from its summed gate pre-activations (B, 4H), in nn.LSTMCell's order i, f, g, o."""
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def init_forget_gate(cell: nn.LSTMCell, bias: float) -> None:
    """Start the cell's forget gate at `bias`: its two biases, b_ih + b_hh, summed to it (b_hh's part zeroed)."""
    n = cell.hidden_size
    with torch.no_grad():
        cell.bias_ih[n:2 * n].fill_(bias)  # nn.LSTMCell's gate order: i, f, g, o
        cell.bias_hh[n:2 * n].zero_()


def merged_lstm_weights(cell: nn.LSTMCell, skip: int = 0):
    """nn.LSTMCell's W_ih u + b_ih + W_hh h + b_hh as one matmul on [u, h]: the weight (4H, in - skip + H),
    without u's first `skip` columns, and the bias (4H,). Built once per sequence, not per step."""
    return torch.cat([cell.weight_ih[:, skip:], cell.weight_hh], dim=1), cell.bias_ih + cell.bias_hh


class StepwiseLinear(torch.autograd.Function):
    """A linear layer that runs at each of T steps, `inputs_t @ weight.T + offset`, with its weight
    gradient taken over all steps at once.

    apply(weight, offset, T, inputs) returns T views of offset (B, out), one for each step to add to its
    `F.linear(inputs_t, weight.detach())`; the caller appends each step's inputs_t (B, in) to the list
    `inputs`, detached (autograd's graph holds the list, which must not hold the graph). Autograd then
    computes only input gradients at each step, each step's output gradient arrives here, and the
    weight's gradient is one (out, T*B) @ (T*B, in) matmul instead of T matmuls of (out, B) @ (B, in),
    which at batch 100 run at about half this CPU's matmul rate. offset's gradient is the sum over steps."""

    @staticmethod
    def forward(ctx, weight, offset, T: int, inputs: list):
        ctx.inputs = inputs  # filled by the caller during the forward pass
        ctx.weight_dtype = weight.dtype
        return tuple(offset.view_as(offset) for _ in range(T))

    @staticmethod
    def backward(ctx, *grad_outputs):
        # Under autocast the gradients and inputs can differ in dtype (bf16 and float32): take the weight's.
        grads = torch.stack(grad_outputs).to(ctx.weight_dtype)  # (T, B, out)
        inputs = torch.stack(ctx.inputs).to(ctx.weight_dtype)  # (T, B, in)
        del ctx.inputs
        grad_weight = grads.flatten(0, 1).T @ inputs.flatten(0, 1)  # (out, in)
        return grad_weight, grads.sum(0), None, None


class DRAW(nn.Module):
    # Weights beyond the paper's that start as its model (a learned prior at N(0, I)): init_from= a checkpoint
    # without them leaves them at that start.
    OPTIONAL_WEIGHTS = ("prior.", "prior_mlp.")

    def __init__(self, cfg: DRAWConfig):
        super().__init__()
        self.cfg = cfg
        pixels = cfg.channels * cfg.height * cfg.width
        self.read = AttentiveRead(cfg) if cfg.read_attention else Read(cfg)
        self.write = AttentiveWrite(cfg) if cfg.write_attention else Write(cfg)
        self.encoder = nn.LSTMCell(self.read.fixed_size + self.read.out_size + cfg.dec_size, cfg.enc_size)  # Eq. 5
        self.decoder = nn.LSTMCell(cfg.z_size, cfg.dec_size)  # Eq. 7
        if cfg.forget_bias is not None:
            for cell in (self.encoder, self.decoder):
                init_forget_gate(cell, cfg.forget_bias)
        self.q = nn.Linear(cfg.enc_size, 2 * cfg.z_size)  # Eqs. 1-2: mu_t and log sigma_t
        self.prior = nn.Linear(cfg.dec_size, 2 * cfg.z_size) if cfg.learned_prior else None  # mu_t^p and log sigma_t^p
        hidden = cfg.prior_hidden if cfg.learned_prior else 0
        self.prior_mlp = nn.Sequential(nn.Linear(cfg.dec_size, hidden), nn.Tanh(), nn.Linear(hidden, 2 * cfg.z_size)) if hidden else None
        if self.prior is not None:  # N(0, I) at the start: the paper's prior
            for layer in (self.prior, *([self.prior_mlp[-1]] if hidden else [])):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        # The paper learns the initial canvas and LSTM states as biases.
        self.canvas0 = nn.Parameter(torch.zeros(pixels))
        self.enc0 = nn.Parameter(torch.zeros(2, cfg.enc_size))  # (h, c)
        self.dec0 = nn.Parameter(torch.zeros(2, cfg.dec_size))  # (h, c)
        self.steps_per_call, self.compiled_steps, self.compiled_decode = 1, None, None  # see compile_steps

    def initial_state(self, batch_size: int):
        # contiguous, like every later state: a compiled call's first steps then reuse the later ones' graph
        expand = lambda p: p.expand(batch_size, -1).contiguous()  # noqa: E731
        return (
            expand(self.canvas0),
            tuple(map(expand, self.enc0)),
            tuple(map(expand, self.dec0)),
        )

    def step(self, x, state, w_enc, w_dec, enc_offset, dec_offset, noise, record: bool = False):
        """One step of Eqs. 1-8. state is (c, h_enc, c_enc, h_dec, c_dec) of step t-1; returns step t's and
        a StepOutput, with a StepRecording only if `record`. The LSTMs' merged weights come detached, and
        their biases (and, without attention, the projection of x) as this step's `offset`s from
        StepwiseLinear. The noise comes from outside, so that this function (the hot path, run T times a
        sequence) can be compiled and still draw torch's numbers."""
        c, h_enc, c_enc, h_dec, c_dec = state
        x_hat = x - torch.sigmoid(c)  # Eq. 3
        r, read_window = self.read(x, x_hat, h_dec)  # Eq. 4
        enc_input = torch.cat([r, h_dec, h_enc], dim=1)  # (B, read + dec_size + enc_size)
        h_enc, c_enc = lstm_step(F.linear(enc_input, w_enc) + enc_offset, c_enc)  # Eq. 5
        mu, log_sigma = self.q(h_enc).chunk(2, dim=1)  # Eqs. 1-2, (B, Z) each
        z = mu + log_sigma.exp() * noise  # Eq. 6
        prior = self.prior_params(h_dec)  # p(z_t | h_dec_{t-1}), None for N(0, I)
        c, h_dec, c_dec, write_window, dec_input = self.decode(z, c, h_dec, c_dec, w_dec, dec_offset)  # Eqs. 7-8
        kl = gaussian_kl(mu, log_sigma, prior)
        recording = StepRecording(c, z, mu, log_sigma, prior, read_window, write_window) if record else None
        return (c, h_enc, c_enc, h_dec, c_dec), StepOutput(kl, enc_input.detach(), dec_input.detach(), recording)

    def steps(self, x, state, w_enc, w_dec, enc_offsets, dec_offsets, noises, record: bool):
        """One step per noise from `state`: the last state and each step's StepOutput, with its recording
        only if `record` (a compiled backward takes a zero gradient for each output that gets none).
        What torch.compile compiles: `steps_per_call` steps unrolled into one graph (compile_steps)."""
        outputs = []
        for enc_offset, dec_offset, noise in zip(enc_offsets, dec_offsets, noises):
            state, output = self.step(x, state, w_enc, w_dec, enc_offset, dec_offset, noise, record)
            outputs.append(output)
        return state, outputs

    def compile_steps(self, steps_per_call: int = 1) -> None:
        """Run the steps through torch.compile from now on, `steps_per_call` of them unrolled in each compiled
        call: each call into compiled code costs guards and autograd wrappers, so more steps per call run
        faster, at longer compilation (the first steps then take a while). Recording passes (pictures, the
        importance-weighted bound) stay eager: rare, and each would be graphs of its own to compile.
        Prior sampling compiles its decode step too (no backward: quick to compile, called once a step)."""
        self.steps_per_call = steps_per_call
        self.compiled_steps = torch.compile(self.steps)
        self.compiled_decode = torch.compile(self.decode)

    def forward(self, x: torch.Tensor, record: bool = False, T: Optional[int] = None) -> DRAWOutput:
        """x (B, H, W), (B, C, H, W) or flat (B, C*H*W) in [0, 1] -> the loss parts; with record, every step's canvas too.
        T steps (default: as configured)."""
        x = x.flatten(1)  # (B, C*H*W)
        c, (h_enc, c_enc), (h_dec, c_dec) = self.initial_state(x.shape[0])
        state = (c, h_enc, c_enc, h_dec, c_dec)
        # Eq. 5's input is [r_t, h_dec_{t-1}]; the part of r_t that is the same at every step (x itself,
        # without attention) goes through the encoder's weights once here, the rest at each step.
        fixed = self.read.fixed_size
        w_enc, b_enc = merged_lstm_weights(self.encoder, skip=fixed)
        w_dec, b_dec = merged_lstm_weights(self.decoder)
        batch, T = x.shape[0], T or self.cfg.T
        enc_fixed = F.linear(self.read.fixed(x), self.encoder.weight_ih[:, :fixed], b_enc) if fixed else b_enc.expand(batch, -1)
        enc_inputs, dec_inputs = [], []  # each step's, for the LSTMs' weight gradients
        enc_offsets = StepwiseLinear.apply(w_enc, enc_fixed, T, enc_inputs)
        dec_offsets = StepwiseLinear.apply(w_dec, b_dec.expand(batch, -1), T, dec_inputs)
        w_enc, w_dec = w_enc.detach(), w_dec.detach()
        keep_inputs = torch.is_grad_enabled()
        out = DRAWOutput(lx=None, lz=None, kl_steps=None)
        kl_steps = []
        steps = self.steps if record else (self.compiled_steps or self.steps)
        for t in range(0, T, self.steps_per_call):
            call = slice(t, min(t + self.steps_per_call, T))
            # fresh noise at every step
            noises = [torch.randn(batch, self.cfg.z_size, device=x.device, dtype=x.dtype) for _ in range(call.stop - t)]
            state, outputs = steps(x, state, w_enc, w_dec, enc_offsets[call], dec_offsets[call], noises, record)
            for step in outputs:
                if keep_inputs:
                    enc_inputs.append(step.enc_input)
                    dec_inputs.append(step.dec_input)
                kl_steps.append(step.kl)
                if record:
                    out.canvases.append(step.recording.canvas)
                    out.latents.append(step.recording.z)
                    out.posteriors.append((step.recording.mu, step.recording.log_sigma))
                    out.priors.append(step.recording.prior)
                    out.read_windows.append(step.recording.read_window)
                    out.write_windows.append(step.recording.write_window)
        c = state[0]
        out.lx = F.binary_cross_entropy_with_logits(c, x, reduction="none").sum(1)  # Eq. 9, (B,)
        out.kl_steps = torch.stack(kl_steps, dim=1)  # (B, T)
        out.lz = out.kl_steps.sum(1)  # Eq. 10, (B,)
        return out

    def prior_params(self, h_dec_prev):
        """The prior's (mu_p, log_sigma_p), each (B, Z), from h_dec_{t-1}; None for the paper's N(0, I)."""
        if self.prior is None:
            return None
        params = self.prior(h_dec_prev)  # (B, 2Z)
        if self.prior_mlp is not None:
            params = params + self.prior_mlp(h_dec_prev)
        return params.chunk(2, dim=1)

    def decode(self, z, c, h_dec, c_dec, w_dec, dec_offset):
        """Eqs. 7-8 in training, 14-15 in sampling: the decoder reads z_t and writes on the canvas. w_dec is
        merged_lstm_weights' and dec_offset its bias (or, in training, StepwiseLinear's offset). Returns
        c_t, h_dec_t, c_dec_t, the write window and the decoder's input [z_t, h_dec_{t-1}]."""
        dec_input = torch.cat([z, h_dec], dim=1)  # (B, Z + dec_size)
        h_dec, c_dec = lstm_step(F.linear(dec_input, w_dec) + dec_offset, c_dec)  # Eq. 7 / 14
        update, window = self.write(h_dec)
        return c + update, h_dec, c_dec, window, dec_input  # Eq. 8 / 15

    @torch.no_grad()
    def sample(self, n: int, T: Optional[int] = None):
        """Eqs. 13-16: draw from the prior. Returns canvases (T, n, H, W), or (T, n, C, H, W) for colour, as
        probabilities, and the write windows."""
        c, _, (h_dec, c_dec) = self.initial_state(n)
        w_dec, b_dec = merged_lstm_weights(self.decoder)
        decode = self.compiled_decode or self.decode
        canvases, windows = [], []
        for _ in range(T or self.cfg.T):
            z = torch.randn(n, self.cfg.z_size, device=c.device)  # Eq. 13
            prior = self.prior_params(h_dec)
            if prior is not None:  # the learned prior instead of Eq. 13's N(0, I)
                z = prior[0] + prior[1].exp() * z
            c, h_dec, c_dec, window, _ = decode(z, c, h_dec, c_dec, w_dec, b_dec)  # Eqs. 14-15
            canvases.append(torch.sigmoid(c))  # D(X | c_t); Eq. 16 samples from the last one
            windows.append(window)
        return torch.stack(canvases).view(-1, n, *image_shape(self.cfg)), windows


# ----------------------------------------------------------------------------------------------------
# A tighter bound for evaluation (Burda et al. 2016; the paper reports the ELBO only)


def log_importance_weights(out: DRAWOutput) -> torch.Tensor:
    """log p(x, z) / q(z | x) of each image's sampled z_1..z_T, (B,), from a recorded forward pass:
    -Lx - sum_t [log q(z_t | x, z_<t) - log p(z_t | z_<t)]. Its expectation over z is the ELBO."""
    log_q_over_p = 0.0
    for z, (mu, log_sigma), prior in zip(out.latents, out.posteriors, out.priors):
        mu_p, log_sigma_p = prior if prior is not None else (torch.zeros_like(z), torch.zeros_like(z))
        eps, eps_p = (z - mu) / log_sigma.exp(), (z - mu_p) / log_sigma_p.exp()
        # log N(z; mu, sigma) - log N(z; mu_p, sigma_p)
        log_q_over_p = log_q_over_p + (0.5 * (eps_p.pow(2) - eps.pow(2)) + log_sigma_p - log_sigma).sum(1)
    return -out.lx - log_q_over_p


@torch.no_grad()
def iw_nll(model: DRAW, x: torch.Tensor, K: int, max_rows: int = 500) -> torch.Tensor:
    """-log (1/K) sum_k p(x, z_k) / q(z_k | x) per image, (B,): an upper bound on -log p(x) that is never
    looser than the ELBO's in expectation and tightens as K grows. Passes hold at most max_rows rows."""
    x = x.flatten(1)
    per_pass = max(1, max_rows // K)  # images per pass
    k_per_pass = min(K, max_rows)  # samples per image per pass
    nll = []
    for images in x.split(per_pass):
        log_w = []  # pieces of (k, b)
        for k in range(0, K, k_per_pass):
            k = min(k_per_pass, K - k)
            out = model(images.repeat(k, 1), record=True)
            log_w.append(log_importance_weights(out).view(k, len(images)))
        nll.append(math.log(K) - torch.logsumexp(torch.cat(log_w), dim=0))
    return torch.cat(nll)
