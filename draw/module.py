"""The LightningModule: DRAW's loss as the training objective, Adam, and the metrics in nats per image."""
from pathlib import Path

import pytorch_lightning as pl
import torch

from draw.errors import UserError
from draw.model import DRAW, DRAWConfig, iw_nll


class NonFiniteTraining(UserError):
    pass


class DRAWModule(pl.LightningModule):
    """`model` holds DRAWConfig's fields and `optim` Adam's lr and betas, both plain dicts, so a checkpoint's
    hyper-parameters rebuild the model with `DRAWModule.load_from_checkpoint(path)` and no config at hand.

    A step whose loss or gradient is not finite is skipped (no update, Adam's moments untouched) and
    counted; `max_nonfinite_steps` of them in a row stop training with a checkpoint of the weights before.
    """

    def __init__(self, model: dict, optim: dict):
        super().__init__()
        self.save_hyperparameters()
        self.model = DRAW(DRAWConfig(**model))
        # Run settings, not hyper-parameters: set by whoever runs the module.
        self.iw_samples = 0  # samples per test image of the importance-weighted bound (0: ELBO only)
        self.max_nonfinite_steps = 10
        self.skipped_steps = 0
        self._nonfinite_in_a_row = 0

    def _step(self, x: torch.Tensor, stage: str):
        out = self.model(x)
        lx, lz = out.lx.mean(), out.lz.mean()
        loss = lx + lz  # Eq. 12: the negative ELBO, an upper bound on the NLL, in nats per image
        on_step = stage == "train"
        name = "loss" if stage == "train" else "nll"
        # sync_dist: under DDP, validation and test means are taken over every rank's images.
        log = dict(batch_size=len(x), on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        self.log(f"{stage}/{name}", loss, prog_bar=True, **log)
        self.log_dict({f"{stage}/lx": lx, f"{stage}/lz": lz}, **log)
        return loss

    def training_step(self, x, batch_idx):
        loss = self._step(x, "train")
        if not torch.isfinite(loss):
            self._skip("loss")
            return None  # Lightning then skips backward, and the optimizer finds no gradients
        return loss

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
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        if self._nonfinite_in_a_row >= self.max_nonfinite_steps:
            path = Path(self.trainer.default_root_dir) / "checkpoints" / "before_nonfinite.ckpt"
            self.trainer.save_checkpoint(path)
            raise NonFiniteTraining(
                f"{self._nonfinite_in_a_row} steps in a row had a non-finite {what} (step {self.global_step}); "
                f"training stopped, the weights from before them are in {path}: lower optim.lr, or raise max_nonfinite_steps"
            )

    def validation_step(self, x, batch_idx):
        return self._step(x, "val")

    def test_step(self, x, batch_idx):
        if self.iw_samples:
            self.log("test/iw_nll", iw_nll(self.model, x, self.iw_samples).mean(), batch_size=len(x), sync_dist=True)
        return self._step(x, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.optim["lr"], betas=tuple(self.hparams.optim["betas"]))
