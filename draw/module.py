"""The LightningModule: DRAW's loss as the training objective, Adam, and the metrics in nats per image."""
import pytorch_lightning as pl
import torch

from draw.model import DRAW, DRAWConfig, iw_nll


class DRAWModule(pl.LightningModule):
    """`model` holds DRAWConfig's fields and `optim` Adam's lr and betas, both plain dicts, so a checkpoint's
    hyper-parameters rebuild the model with `DRAWModule.load_from_checkpoint(path)` and no config at hand."""

    def __init__(self, model: dict, optim: dict):
        super().__init__()
        self.save_hyperparameters()
        self.model = DRAW(DRAWConfig(**model))
        # Samples per test image of the importance-weighted bound, set for evaluation (0: ELBO only).
        self.iw_samples = 0

    def forward(self, x, record: bool = False):
        return self.model(x, record=record)

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
        return self._step(x, "train")

    def validation_step(self, x, batch_idx):
        return self._step(x, "val")

    def test_step(self, x, batch_idx):
        if self.iw_samples:
            self.log("test/iw_nll", iw_nll(self.model, x, self.iw_samples).mean(), batch_size=len(x), sync_dist=True)
        return self._step(x, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.optim["lr"], betas=tuple(self.hparams.optim["betas"]))
