"""Lightning callbacks: pictures of the model learning to draw or to look, the validation history, training throughput,
the last checkpoint, Ctrl-C and SIGTERM; and how every checkpoint is written (AtomicCheckpointIO)."""
import contextlib
import csv
import logging
import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from draw import viz
from draw.classifier import first_misclassified
from draw.errors import UserError
from draw.model import image_shape

PICTURE_LOGGERS = (TensorBoardLogger, WandbLogger, MLFlowLogger)


def log_picture(logger, tag: str, image: torch.Tensor, step: int) -> None:
    """One picture (3, H, W) in [0, 1] to a logger that takes pictures, each in its own way."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(tag, image, step)
        return
    pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    if isinstance(logger, WandbLogger):
        logger.log_image(key=tag, images=[pixels], step=step)
    else:  # MLflow: an image artifact of the run
        logger.experiment.log_image(logger.run_id, pixels, f"{tag}/step{step:07d}.png")


class DrawingImages(pl.Callback):
    """Logs prior samples, the canvas over steps and reconstructions beside their originals to every logger
    that takes pictures (TensorBoard, W&B, MLflow), and to TensorBoard the per-step KL (as a histogram whose
    bins are the steps 1..T, so its shape is the KL curve). Silent without such a logger (CSV, none). The
    same noise every epoch (its own seed), so epochs compare and training's random stream is left untouched."""

    def __init__(self, n: int = 16, steps_shown: int = 8, seed: int = 0):
        self.n, self.steps_shown, self.seed = n, steps_shown, seed

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, PICTURE_LOGGERS)]
        if trainer.sanity_checking or not loggers or not trainer.is_global_zero:
            return
        step, model = trainer.global_step, module.model
        x = next(iter(trainer.val_dataloaders))[: self.n].to(module.device)
        devices = [module.device] if module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(self.seed)
            canvases, _ = model.sample(self.n)  # (T, n, [C,] H, W)
            out = model(x, record=True)
        reconstructions = torch.sigmoid(out.canvases[-1]).view(-1, *image_shape(model.cfg))
        pictures = {
            "samples": viz.grid_of(canvases[-1]),
            "samples_over_steps": viz.steps_picture(canvases[:, : self.steps_shown]),
            "reconstructions": viz.grid_of(reconstructions, x.view_as(reconstructions)),
        }
        for logger in loggers:
            for tag, image in pictures.items():
                log_picture(logger, tag, image, step)
        tensorboard = [lg for lg in loggers if isinstance(lg, TensorBoardLogger)]
        if not tensorboard:
            return
        writer = tensorboard[0].experiment
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


class GlimpseImages(pl.Callback):
    """For a classifier: the first n validation images with each glimpse's window and contents and the predicted
    and true labels ("glimpses"), and n misclassified ones from the first validation batches ("misclassified"),
    to every logger that takes pictures."""

    def __init__(self, n: int = 8, batches_searched: int = 10):
        self.n, self.batches_searched = n, batches_searched

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, PICTURE_LOGGERS)]
        if trainer.sanity_checking or not loggers or not trainer.is_global_zero:
            return
        x, y = next(iter(trainer.val_dataloaders))
        wrong = first_misclassified(module.model, trainer.val_dataloaders, self.n, module.device, self.batches_searched)
        shown = {"glimpses": (x[: self.n].to(module.device), y[: self.n].to(module.device)), "misclassified": wrong}
        for tag, (x, y) in shown.items():
            if not len(x):
                continue
            (picture,), _ = viz.classify_and_show(module.model, x, y)
            image = torch.from_numpy(np.array(picture)).permute(2, 0, 1).float() / 255
            for logger in loggers:
                log_picture(logger, tag, image, trainer.global_step)


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
            images = batch[0] if isinstance(batch, (tuple, list)) else batch  # (x, y) for classification
            self.images += len(images) * trainer.world_size
        self._last, self._first_batch_done = now, True

    def on_validation_start(self, trainer, module):
        self._last = None

    def on_validation_end(self, trainer, module):
        self._last = time.perf_counter()


# A cluster's warning before a job's time limit or pre-emption: submitit's (Hydra's SLURM launcher), whose handler
# requeues the job and exits.
PREEMPTION_SIGNAL = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


class SaveOnInterrupt(pl.Callback):
    """Ctrl-C (SIGINT) or SIGTERM (what SLURM, Kubernetes, systemd and `timeout` send) during fit: save
    dirpath/last.ckpt at the current step (train() then prints how to resume). Lightning then exits.

    Lightning acts on SIGTERM only between batches; Python raises Ctrl-C's KeyboardInterrupt wherever the step is, and
    one landing after the optimizer step but before Lightning counts the batch done saves a checkpoint whose resumed
    run takes that batch again (one step too many). So during training Ctrl-C is held until the batch ends, where
    Lightning resumes a checkpoint exactly; a second Ctrl-C stops at once.

    The cluster's pre-emption signal (PREEMPTION_SIGNAL), where a handler for it is already installed, is held the same
    way: at the batch's end last.ckpt is saved, then that handler takes over (submitit's requeues the job, whose next
    start resumes from last.ckpt, and exits).

    A checkpoint taken in the middle of a fit's validation resumes past that validation (the epoch's validation NLL and
    best checkpoint lost; early stopping, finding no metric, crashes). So SIGTERM there is held to the validation's end
    (a minute at most on the paper's models), after which Lightning stops at the epoch's end; anything else that stops
    a validation (a second Ctrl-C) keeps the last.ckpt already written rather than saving one there."""

    def __init__(self, dirpath):
        self.path = Path(dirpath) / "last.ckpt"
        self._ctrl_c, self._preempted, self._sigterm_held, self._replaced = False, False, False, {}

    def on_train_start(self, trainer, module):
        self._ctrl_c, self._preempted, self._sigterm_held = False, False, False
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set a handler
            return
        # A process that ignores SIGINT (a shell's background job) keeps ignoring it.
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._replaced[signal.SIGINT] = signal.signal(signal.SIGINT, self._hold_ctrl_c)
        if callable(signal.getsignal(PREEMPTION_SIGNAL)):
            self._replaced[PREEMPTION_SIGNAL] = signal.signal(PREEMPTION_SIGNAL, self._hold_preemption)

    def _hold_ctrl_c(self, signum, frame):
        if self._ctrl_c:
            raise KeyboardInterrupt
        self._ctrl_c = True
        logging.getLogger("draw").info("Ctrl-C: stopping when this batch ends (Ctrl-C again to stop at once)")

    def _hold_preemption(self, signum, frame):
        self._preempted = True
        logging.getLogger("draw").info(f"{signal.Signals(signum).name}: the job is to stop; saving when this batch ends")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        # Not at an epoch's last batch: resumed from there, Lightning would skip that epoch's validation
        # (LastCheckpoint's docstring); the next epoch's first batch start is the next safe place.
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._stop_if_asked(trainer)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._stop_if_asked(trainer)

    def _stop_if_asked(self, trainer):
        if self._ctrl_c:
            raise KeyboardInterrupt
        if self._preempted:
            handler = self._replaced[PREEMPTION_SIGNAL]
            self._save(trainer)
            self._restore_handlers()
            handler(PREEMPTION_SIGNAL, None)

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        # Lightning checks its SIGTERM flag right after this hook and would stop here; lowered until the validation ends.
        if trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.received_sigterm:
            if not self._sigterm_held:
                logging.getLogger("draw").info("SIGTERM: stopping when this validation ends")
            trainer._signal_connector.received_sigterm, self._sigterm_held = False, True

    def on_validation_end(self, trainer, module):
        if self._sigterm_held:
            trainer._signal_connector.received_sigterm, self._sigterm_held = True, False

    def on_train_end(self, trainer, module):
        self._restore_handlers()  # a pre-emption held past the last batch: training is done, the test is short
        if self._ctrl_c:  # held past the last batch: the run still stops as a Ctrl-C-ed one, not tested as finished
            raise KeyboardInterrupt

    def _restore_handlers(self):
        for signum, handler in self._replaced.items():
            signal.signal(signum, handler)
        self._replaced = {}

    def on_exception(self, trainer, module, exception):
        self._restore_handlers()
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.state.fn == "fit":
            if trainer.validating:
                if trainer.is_global_zero:
                    logging.getLogger("draw").info(f"interrupted during validation: kept {self.path} as it was")
                return
            self._save(trainer)

    def _save(self, trainer):
        trainer.save_checkpoint(self.path, weights_only=False)
        if trainer.is_global_zero:
            logging.getLogger("draw").info(f"interrupted: saved {self.path}")


class LastCheckpoint(ModelCheckpoint):
    """dirpath/last.ckpt, overwritten: at each epoch's end (after its validation) and, within epochs, every
    `every_n_steps` optimizer steps and every `every_minutes` minutes of training where those are > 0, so a killed
    run loses little. Never at an epoch's last batch: Lightning resumes a checkpoint taken there (after the epoch's
    training, before its validation) into the next epoch, so that epoch's validation and best checkpoint would be lost."""

    def __init__(self, dirpath, every_n_steps: int = 0, every_minutes: float = 0):
        super().__init__(dirpath=dirpath, filename="last", enable_version_counter=False)
        self.every_n_steps, self.every_minutes = every_n_steps, every_minutes
        self._saved_at = time.monotonic()

    def on_train_start(self, trainer, module):
        super().on_train_start(trainer, module)
        self._saved_at = time.monotonic()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or trainer.sanity_checking or trainer.fast_dev_run:
            return
        steps_due = self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0
        time_due = self.every_minutes > 0 and time.monotonic() - self._saved_at >= 60 * self.every_minutes
        time_due = trainer.strategy.broadcast(time_due)  # rank 0's clock decides for all: saving is collective
        if steps_due or time_due:
            trainer.save_checkpoint(Path(self.dirpath) / "last.ckpt", weights_only=False)
            self._saved_at = time.monotonic()


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with file names that count epochs from 1, as validation.csv and every log line do:
    epoch001-val_nll123.45.ckpt holds the weights after the first epoch."""

    def format_checkpoint_name(self, metrics, filename=None, ver=None, prefix=None) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)


class ReportCompilation(pl.Callback):
    """With compile=true: says that torch.compile is compiling (the first batches then take minutes, which looks like
    a hang) and, once the first training step is done, how long it all took."""

    def __init__(self):
        self._started = None

    def on_fit_start(self, trainer, module):
        self._started = time.perf_counter()
        if trainer.is_global_zero:
            logging.getLogger("draw").info("compile=true: torch.compile compiles the model's steps in the first validation and "
                                           "training batches (minutes the first time, seconds once torch's cache holds them)")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self._started is not None and trainer.is_global_zero:
            logging.getLogger("draw").info(f"compiled: the first training step ended {time.perf_counter() - self._started:.0f} s "
                                           "after the start (compilation and the first validation batches included)")
        self._started = None


class CheckpointWriteError(UserError):
    pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint is written beside its final name and renamed into place (os.replace: atomic within one file
    system), so a write that fails (a full disk, a folder made read-only) leaves the previous file whole; the run then
    stops with one line saying so. Lightning's own writer goes through the system's temporary folder, and a copy from
    there onto a full disk can leave a truncated last.ckpt."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
            os.replace(partial, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} was there"
            raise CheckpointWriteError(f"writing {path} failed ({e.strerror or type(e).__name__}): {kept}; free space "
                                       "there (or make it writable) and resume with the command printed at the start") from None


class ProgressBar(TQDMProgressBar):
    """Lightning's bar, which in a run resumed mid-epoch names the epoch and counts on from the batch it resumed at:
    Lightning skips on_train_epoch_start there, and its bar said "Training: 82/?" until that epoch ended."""

    def on_train_start(self, trainer, module):
        super().on_train_start(trainer, module)
        if trainer.fit_loop.restarted_mid_epoch:
            self.on_train_epoch_start(trainer)
            self.train_progress_bar.n = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            self.train_progress_bar.refresh()


class RandomStates(pl.Callback):
    """Every random stream the run draws from (torch's, CUDA's, NumPy's, Python's) goes into each checkpoint, and a
    resumed run takes them back just before its first training step, after the sanity check has drawn its own: the
    model's noise then continues as in the uninterrupted run (the data's draws come from each batch's own seed)."""

    def __init__(self):
        self._to_restore = None

    def state_dict(self) -> dict:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss]  # tensors load as data
        return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": numpy_state, "python": random.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self._to_restore = state

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self._to_restore is None:
            return
        state, self._to_restore = self._to_restore, None
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, position, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        random.setstate(state["python"])
