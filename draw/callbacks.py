"""Lightning callbacks: TensorBoard pictures of the model learning to draw, the validation history, training throughput,
Ctrl-C and SIGTERM."""
import csv
import logging
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from draw import viz


class DrawingImages(pl.Callback):
    """Logs prior samples, the canvas over steps, reconstructions beside their originals, and the per-step
    KL (as a histogram whose bins are the steps 1..T, so its shape is the KL curve). Does nothing without
    a TensorBoard logger. The same noise every epoch (its own seed), so epochs compare and training's
    random stream is left untouched."""

    def __init__(self, n: int = 16, steps_shown: int = 8, seed: int = 0):
        self.n, self.steps_shown, self.seed = n, steps_shown, seed

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if trainer.sanity_checking or not loggers or not trainer.is_global_zero:
            return
        writer, step, model = loggers[0].experiment, trainer.global_step, module.model
        H, W = model.cfg.height, model.cfg.width
        x = next(iter(trainer.val_dataloaders))[: self.n].to(module.device)
        devices = [module.device] if module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(self.seed)
            canvases, _ = model.sample(self.n)  # (T, n, H, W)
            out = model(x, record=True)
        writer.add_image("samples", viz.grid_of(canvases[-1]), step)
        writer.add_image("samples_over_steps", viz.steps_picture(canvases[:, : self.steps_shown]), step)
        reconstructions = torch.sigmoid(out.canvases[-1]).view(-1, H, W)
        writer.add_image("reconstructions", viz.grid_of(reconstructions, x.view(-1, H, W)), step)
        kl = out.kl_steps.mean(0).double().cpu()  # (T,) nats per step
        steps = torch.arange(1, len(kl) + 1, dtype=torch.float64)
        writer.add_histogram_raw(
            "kl_per_step",
            min=1,
            max=len(kl),
            num=float(kl.sum()),
            sum=float((kl * steps).sum()),
            sum_squares=float((kl * steps**2).sum()),
            bucket_limits=steps.tolist(),
            bucket_counts=kl.tolist(),
            global_step=step,
        )


class ValidationHistory(pl.Callback):
    """Appends each validation's metrics (epoch counted from 1, optimizer step, val/*) to a CSV file in the run
    folder, whatever the logger (or none): sweep summaries and curves are built from it."""

    def __init__(self, path):
        self.path = path

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        row = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step, **metrics}
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)


class TrainThroughput(pl.Callback):
    """Training images per second over the training batches (data loading, logging and the progress bar
    included; validation left out, and the run's first batch, which holds torch.compile's compilation)."""

    def __init__(self):
        self.images, self.seconds, self._last = 0, 0.0, None
        self._first_batch_done = False

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")

    def on_train_epoch_start(self, trainer, module):
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self._last is not None and self._first_batch_done:
            self.seconds += now - self._last
            self.images += len(batch) * trainer.world_size
        self._last, self._first_batch_done = now, True

    def on_validation_start(self, trainer, module):
        self._last = None

    def on_validation_end(self, trainer, module):
        self._last = time.perf_counter()


class SaveOnInterrupt(pl.Callback):
    """Ctrl-C (SIGINT) or SIGTERM (what SLURM, Kubernetes, systemd and `timeout` send) during fit: save a
    checkpoint at the current step and say how to resume. Lightning then exits."""

    def __init__(self, path, resume_command: str):
        self.path, self.resume_command = path, resume_command

    def on_exception(self, trainer, module, exception):
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.path)
            if trainer.is_global_zero:
                logging.getLogger("draw").info(f"interrupted: saved {self.path}\nresume with: {self.resume_command}")


class MidEpochCheckpoint(ModelCheckpoint):
    """A checkpoint every N steps or minutes, but never at an epoch's last batch: Lightning resumes a checkpoint
    taken there (after the epoch's training, before its validation) into the next epoch, so that epoch's
    validation and best checkpoint would be lost. The end-of-epoch checkpoint, after validation, covers it."""

    def on_train_batch_end(self, trainer, *args, **kwargs):
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            super().on_train_batch_end(trainer, *args, **kwargs)
