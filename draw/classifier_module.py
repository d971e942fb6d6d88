"""The classification task's LightningModule (Section 4.1, Table 1): cross-entropy as the training objective,
the error in % as the metric."""
from typing import Optional

import torch
import torch.nn.functional as F

from draw.classifier import build_classifier
from draw.module import TrainingModule


class ClassifierModule(TrainingModule):
    """`model` holds a classifier's plain hyper-parameters (`architecture`: glimpse or cnn, and its config's
    fields), `optim` and `scheduler` as DRAWModule's, so `ClassifierModule.load_from_checkpoint(path)`
    rebuilds it with no config at hand. Logs `{stage}/nll` (cross-entropy, nats per image; `train/loss` in
    training) and `{stage}/error` (% of images misclassified)."""

    def __init__(self, model: dict, optim: dict, scheduler: Optional[dict] = None):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_classifier(model)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch  # (B, H, W), (B,)
        logits = self.model(x).logits  # (B, K)
        loss = F.cross_entropy(logits, y)
        error = 100 * (logits.argmax(1) != y).float().mean()
        on_step = stage == "train"
        log = dict(batch_size=len(x), on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        self.log(f"{stage}/{'loss' if on_step else 'nll'}", loss, prog_bar=True, **log)
        self.log(f"{stage}/error", error, prog_bar=not on_step, **log)
        return loss

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        self.log_lr()
        if not torch.isfinite(loss):
            self._skip("loss")
            return None
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")
