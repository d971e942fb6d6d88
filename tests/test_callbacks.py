from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning import Callback, Trainer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import tiny_module
from draw.callbacks import DrawingImages, LastCheckpoint, TrainThroughput
from draw.data import MNISTDataModule


def test_training_writes_the_drawing_images_to_tensorboard(trained_run):
    _, run, _ = trained_run
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    assert {"samples", "samples_over_steps", "reconstructions"} <= set(events.Tags()["images"])
    assert len(events.Images("samples")) == 2  # one per validation epoch, none for the sanity check
    samples = events.Images("samples")[-1]
    assert (samples.width, samples.height) == (4 * 30 + 2, 4 * 30 + 2)  # 16 samples, 4 x 4
    (kl,) = [e.histogram_value for e in events.Histograms("kl_per_step")][-1:]
    assert list(kl.bucket_limit) == [1.0, 2.0, 3.0]  # one bin per step of T=3
    assert all(c >= 0 for c in kl.bucket) and kl.num == pytest.approx(sum(kl.bucket))


def test_callback_does_nothing_without_tensorboard(tiny_mnist, tmp_path):
    module = tiny_module()
    trainer = Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[DrawingImages()], default_root_dir=tmp_path,
    )
    trainer.fit(module, MNISTDataModule(data_dir=str(tiny_mnist), val_size=40))
    assert list(tmp_path.iterdir()) == []


def test_throughput_leaves_out_the_first_batch_and_validation(monkeypatch):
    """The first batch holds torch.compile's compilation: counting it would report compile time as speed."""
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr("draw.callbacks.time.perf_counter", lambda: clock.now)  # a clock the test moves: no sleeps
    throughput, trainer, batch = TrainThroughput(), SimpleNamespace(world_size=1), torch.zeros(50, 28, 28)
    throughput.on_train_epoch_start(trainer, None)
    clock.now += 30.0  # the first batch, compiling
    throughput.on_train_batch_end(trainer, None, None, batch, 0)
    for i in range(1, 4):
        clock.now += 0.05
        throughput.on_train_batch_end(trainer, None, None, batch, i)
    throughput.on_validation_start(trainer, None)
    clock.now += 10.0
    throughput.on_validation_end(trainer, None)
    clock.now += 0.05
    throughput.on_train_batch_end(trainer, None, None, batch, 4)
    assert throughput.images == 4 * 50
    assert throughput.seconds == pytest.approx(0.2)  # four batches of 0.05 s, neither pause
    throughput.on_train_batch_end(trainer, None, None, (torch.zeros(30, 100, 100), torch.zeros(30)), 5)
    assert throughput.images == 4 * 50 + 30  # a classifier's batch (images, labels) counts its images


class SavedAt(Callback):
    """Moves the test's clock 4 minutes a batch and records the step of every save of last.ckpt."""

    def __init__(self, clock):
        self.clock, self.steps = clock, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.clock.now += 4 * 60

    def on_save_checkpoint(self, trainer, module, checkpoint):
        self.steps.append(trainer.global_step)


@pytest.mark.parametrize("every_n_steps,every_minutes,saved_at", [
    (3, 0, [3, 6, 9, 10, 12, 15, 18, 20]),  # 10 and 20 are the epochs' ends, after validation
    (5, 0, [5, 10, 15, 20]),  # not at step 10 and 20 within the epoch: it would be resumed without its validation
    (0, 10, [3, 6, 9, 10, 12, 15, 18, 20]),  # 12 minutes are 3 batches
    (4, 10, [3, 4, 7, 8, 10, 11, 12, 15, 16, 19, 20]),  # a save for either reason restarts the minutes
    (0, 0, [10, 20]),
])
def test_last_checkpoint_saves_every_n_steps_and_minutes_and_at_each_epochs_end(
        every_n_steps, every_minutes, saved_at, tiny_mnist, tmp_path, monkeypatch):
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr("draw.callbacks.time.monotonic", lambda: clock.now)
    saves = SavedAt(clock)
    trainer = Trainer(max_epochs=2, limit_val_batches=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                      callbacks=[LastCheckpoint(tmp_path, every_n_steps, every_minutes), saves])
    trainer.fit(tiny_module(), MNISTDataModule(data_dir=str(tiny_mnist), batch_size=20, val_size=40))  # 10 steps an epoch
    assert saves.steps == saved_at and (tmp_path / "last.ckpt").is_file()
