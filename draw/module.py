"""The LightningModule: DRAW's loss as the training objective, the optimizer and learning-rate schedule, and
the metrics in nats per image."""
import math
from pathlib import Path
from typing import Optional

import hydra
import pytorch_lightning as pl
import torch

from draw.config import SCHEDULES
from draw.errors import UserError
from draw.model import DRAW, DRAWConfig, iw_nll


class NonFiniteTraining(UserError):
    pass


def build_optimizer(params, optim: dict) -> torch.optim.Optimizer:
    """`optim` is the optim group: a `_partial_` optimizer (`_target_` and its arguments). Checkpoints from before
    the group had a `_target_` hold Adam's lr and betas alone."""
    optim = {"_target_": "torch.optim.Adam", "_partial_": True, **optim}
    return hydra.utils.instantiate(optim, _convert_="all")(params)


def lr_schedule(optimizer, scheduler: dict, total_steps: int) -> Optional[dict]:
    """The scheduler group as Lightning's lr_scheduler dict (None for `none`). Factors multiply optim.lr.

    cosine: linear warm-up over `warmup_steps` from 0, then a half cosine down to `min_lr_ratio` at the last step;
    onecycle: torch's OneCycleLR with max_lr = optim.lr; plateau: ReduceLROnPlateau on val/nll, once an epoch."""
    name = scheduler["name"]
    if name == "none":
        return None
    if name == "cosine":
        warmup, floor = scheduler["warmup_steps"], scheduler["min_lr_ratio"]

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total_steps - 1 - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
    if name == "onecycle":
        lr = optimizer.param_groups[0]["lr"]
        kwargs = {k: scheduler[k] for k in ("pct_start", "div_factor", "final_div_factor")}
        onecycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, cycle_momentum=False, **kwargs)
        return {"scheduler": onecycle, "interval": "step"}
    if name == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=scheduler["factor"], patience=scheduler["patience"])
        # strict=False: a run without validation (limit_val_batches=0) keeps its lr, with Lightning's warning
        return {"scheduler": plateau, "interval": "epoch", "monitor": "val/nll", "strict": False}
    raise UserError(f"scheduler.name={name!r} is not a schedule: use one of {', '.join(SCHEDULES)}")


def train_only(module: torch.nn.Module, prefixes: list) -> int:
    """Freeze every parameter but those named by `prefixes` (a module's name, e.g. "model.prior", or a parameter's):
    the optimizer then holds these alone, and the backward pass computes nothing for the rest. Returns how many
    numbers are trained."""
    chosen = 0
    for name, param in module.named_parameters():
        param.requires_grad_(any(name == p or name.startswith(p + ".") for p in prefixes))
        chosen += param.numel() if param.requires_grad else 0
    if not chosen:
        names = sorted({".".join(name.split(".")[:2]) for name, _ in module.named_parameters()})
        raise UserError(f"train_only={list(prefixes)} names no parameter of this model: name some of {', '.join(names)}")
    return chosen


class TrainingModule(pl.LightningModule):
    """What every task's LightningModule shares: the optimizer (`optim`, a `_partial_` config) and learning-rate
    schedule (`scheduler`) from plain dicts, gradient clipping, and skipping non-finite steps.

    A step whose loss or gradient is not finite is skipped (no update, Adam's moments untouched) and
    counted; `max_nonfinite_steps` of them in a row stop training with a checkpoint of the weights before.
    A subclass's training_step returns None for a non-finite loss after calling `_skip("loss")`.
    """

    def __init__(self):
        super().__init__()
        # Run settings, not hyper-parameters: set by whoever runs the module.
        self.max_nonfinite_steps = 10
        self.skipped_steps = 0
        self._nonfinite_in_a_row = 0

    def log_lr(self):
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # Every step, 0 included: a flat line at 0 says as much as a rise would.
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clipping measures the gradient's norm anyway: a non-finite norm is a non-finite gradient, and that
        step is skipped. Lightning calls this on every step, with or without a clip value."""
        params = [p for p in self.parameters() if p.grad is not None]
        if not params:  # the loss was not finite and training_step skipped backward
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not torch.isfinite(norm):
            for p in params:
                p.grad = None  # Adam leaves parameters without gradients (and their moments) alone
            self._skip("gradient")
            return
        self._nonfinite_in_a_row = 0
        if gradient_clip_val and gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        elif gradient_clip_val:
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)

    def _skip(self, what: str):
        self.skipped_steps += 1
        self._nonfinite_in_a_row += 1
        if self._nonfinite_in_a_row >= self.max_nonfinite_steps:
            path = Path(self.trainer.default_root_dir) / "checkpoints" / "before_nonfinite.ckpt"
            self.trainer.save_checkpoint(path, weights_only=False)
            raise NonFiniteTraining(
                f"{self._nonfinite_in_a_row} steps in a row had a non-finite {what} (step {self.global_step}); "
                f"training stopped, the weights from before them are in {path}: lower optim.lr, or raise max_nonfinite_steps"
            )

    def configure_optimizers(self):
        optimizer = build_optimizer([p for p in self.parameters() if p.requires_grad], self.hparams.optim)  # train_only
        schedule = lr_schedule(optimizer, self.hparams.scheduler or {"name": "none"}, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": schedule} if schedule else optimizer


class DRAWModule(TrainingModule):
    """`model` holds DRAWConfig's fields, `optim` the optimizer (a `_partial_` config) and `scheduler` the
    learning-rate schedule, all plain dicts, so a checkpoint's hyper-parameters rebuild the model with
    `DRAWModule.load_from_checkpoint(path)` and no config at hand.

    The training objective is Lx + beta Lz with beta = `kl_weight` (a beta-VAE, Higgins et al. 2017: above 1 it pulls
    the posteriors toward the prior, at a cost in the bound). `kl_warmup_steps` > 0 raises beta linearly from 0 to
    `kl_weight` over that many steps (KL annealing, Bowman et al. 2016, a common remedy for latents left unused; it
    did not speed up the paper model, docs/experiments/recipe.md). Only the gradient sees beta: every logged `loss`
    and `nll` is the true negative ELBO, Lx + Lz.
    """

    def __init__(self, model: dict, optim: dict, scheduler: Optional[dict] = None, kl_warmup_steps: int = 0,
                 kl_weight: float = 1.0):
        super().__init__()
        self.save_hyperparameters()
        self.model = DRAW(DRAWConfig(**model))
        self.iw_samples = 0  # a run setting: samples per test image of the importance-weighted bound (0: ELBO only)

    def _step(self, x: torch.Tensor, stage: str):
        return self._log_bound(self.model(x), stage)

    def _log_bound(self, out, stage: str):
        """Log one pass's bound (loss or nll), Lx and Lz, means over the batch's images; return the last two."""
        images = out.lx.shape[0]
        lx, lz = out.lx.mean(), out.lz.mean()
        loss = lx + lz  # Eq. 12: the negative ELBO, an upper bound on the NLL, in nats per image
        on_step = stage == "train"
        name = "loss" if stage == "train" else "nll"
        # sync_dist: under DDP, validation and test means are taken over every rank's images.
        log = dict(batch_size=images, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        self.log(f"{stage}/{name}", loss, prog_bar=True, **log)
        self.log_dict({f"{stage}/lx": lx, f"{stage}/lz": lz}, **log)
        if stage != "train":  # the unit colour models are compared in: the bound over log 2 and every dimension
            cfg = self.model.cfg
            self.log(f"{stage}/bits_per_dim", loss / (math.log(2) * cfg.channels * cfg.height * cfg.width), **log)
        return lx, lz

    @property
    def beta(self) -> float:
        """beta of the training objective Lx + beta Lz at this step (`kl_weight` after any KL warm-up)."""
        warmup, beta = self.hparams.kl_warmup_steps, self.hparams.kl_weight
        return beta * min(1.0, (self.global_step + 1) / warmup) if warmup else beta

    def training_step(self, x, batch_idx):
        lx, lz = self._step(x, "train")
        beta = self.beta
        loss = lx + beta * lz
        self.log_lr()
        if self.hparams.kl_weight != 1.0 or self.hparams.kl_warmup_steps:  # beta is not the ELBO's 1 throughout
            self.log("train/kl_weight", beta, on_step=True, on_epoch=False)
        if not torch.isfinite(loss):
            self._skip("loss")
            return None  # Lightning then skips backward, and the optimizer finds no gradients
        return loss

    def validation_step(self, x, batch_idx):
        self._step(x, "val")

    def on_test_epoch_start(self):
        self._mc_squares, self._mc_images = 0.0, 0

    def test_step(self, x, batch_idx):
        if self.iw_samples:
            self.log("test/iw_nll", iw_nll(self.model, x, self.iw_samples).mean(), batch_size=len(x), sync_dist=True)
        first = self.model(x)
        self._log_bound(first, "test")
        # A second draw of every z for the same images: how far one draw's bound moves (its Monte-Carlo error).
        second = self.model(x)
        self._mc_squares += ((first.nll_bound - second.nll_bound) ** 2).sum().double()  # a tensor: no sync per batch
        self._mc_images += len(x)

    def on_test_epoch_end(self):
        """test/nll_mc_stderr: the standard error of test/nll from its draws of z alone (the images are the same
        in every evaluation): per image Var = E[(a - b)^2] / 2 for two draws a, b; over n images sqrt(Var / n)."""
        totals = torch.stack([torch.as_tensor(self._mc_squares, dtype=torch.float64, device=self.device),
                              torch.tensor(float(self._mc_images), dtype=torch.float64, device=self.device)])
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        squares, images = totals.tolist()
        if images:
            self.log("test/nll_mc_stderr", math.sqrt(squares / 2 / images / images))
