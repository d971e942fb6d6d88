"""Bad input stops with one line; killed, interrupted and NaN-hit runs lose little; seeded runs repeat."""
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from importlib.util import find_spec

import numpy as np
import pytest
import torch
from pytorch_lightning import Callback, Trainer

from conftest import ROOT, TINY_RUN, compose_config, run_script, tiny_module
from draw.config import read_checkpoint
from draw.data import MNISTDataModule
from draw.errors import UserError
from draw.module import NonFiniteTraining
from draw.run import train


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(f in last for f in fragments), last


BAD_VALUES = [
    ("model.T=0", "model.T=0", "integer >= 1"),
    ("model.z_size=-3", "model.z_size=-3", "integer >= 1"),
    ("model.enc_size=abc", "model.enc_size='abc'", "integer >= 1"),
    ("attention.read_n=40", "attention.read_n=40", "<= 28"),
    ("attention.write_n=0", "attention.write_n=0", ">= 1"),
    ("data.batch_size=0", "data.batch_size=0", "integer >= 1"),
    ("optim.lr=-0.1", "optim.lr=-0.1", "> 0"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0", "integer >= 1"),
    ("data.binarization=random", "data.binarization='random'", "dynamic, fixed, threshold, none"),
    ("trainer.accelerator=tpu9", "trainer.accelerator='tpu9'", "auto, cpu, gpu"),
    ("attention.read_init.stride=-2", "attention.read_init.stride=-2", "number > 0"),
    ("scheduler.name=linear", "scheduler.name='linear'", "none, cosine, onecycle, plateau"),
    ("kl_warmup_steps=-1", "kl_warmup_steps=-1", "integer >= 0"),
    ("kl_weight=0", "kl_weight=0", "a number > 0"),
    ("model.prior_hidden=64", "model.prior_hidden=64", "0 without model.learned_prior=true"),
    ("train_only=model.prior", "train_only='model.prior'", "a list of parameter names, e.g. [model.prior]"),
    ("optim.weight_decay=-1", "optim.weight_decay=-1", ">= 0"),
    ("checkpoint_every_minutes=-5", "checkpoint_every_minutes=-5", "a number >= 0"),
    ("trainer.max_epochs=-1 scheduler=cosine", "trainer.max_epochs=-1", "with scheduler=cosine"),
    *[pytest.param(f"logger={package}", f"logger={package} needs the {package} package", f"pip install -e '.[{package}]'",
                   marks=pytest.mark.skipif(find_spec(package) is not None, reason=f"{package} is installed here"))
      for package in ("wandb", "mlflow")],
]


@pytest.mark.parametrize("override,named,allowed", BAD_VALUES, ids=[(b.values if hasattr(b, "values") else b)[0] for b in BAD_VALUES])
def test_bad_value_is_named_with_what_is_allowed_before_any_work(override, named, allowed, tiny_mnist, tmp_path):
    with pytest.raises(UserError) as error:
        train(compose_config(*override.split(), f"data.data_dir={tiny_mnist}"), str(tmp_path / "run"))
    assert named in str(error.value) and allowed in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_bad_value_on_the_command_line_is_one_line_and_exit_status_2(tiny_mnist, tmp_path):
    proc = run_script("train.py", tmp_path, "model.T=0", f"data.data_dir={tiny_mnist}", f"hydra.run.dir={tmp_path}/run", check=False)
    assert_one_line_error(proc, "model.T=0", "integer >= 1")
    # Nothing written but Hydra's record of the run and its log, which has the error line too.
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".hydra", "train.log"]
    assert (tmp_path / "run" / "train.log").read_text().strip().endswith(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("script,overrides,message", [
    ("train.py", ["optim.lr=5"], "optim.lr=5 is not allowed"),
    ("train.py", ["+model.TT=4"], "model.TT=4 is not allowed: model's keys are T, z_size, enc_size, dec_size, forget_bias"),
    ("sample.py", ["ckpt_path=nope.ckpt"], "ckpt_path=nope.ckpt does not exist"),
])
def test_a_run_rejected_before_any_work_leaves_no_folder(script, overrides, message, tmp_path):
    """In its own default folder (outputs/DATE/TIME), made for it: one line, status 2, and the folder gone again."""
    proc = run_script(script, tmp_path, *overrides, check=False)
    assert_one_line_error(proc, message, "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_device_says_use_cpu(tmp_path):
    with pytest.raises(UserError, match=r"trainer.accelerator='cuda': no CUDA device .* use trainer.accelerator=cpu"):
        train(compose_config("trainer.accelerator=cuda"), str(tmp_path))


def test_unknown_attention_lists_the_options(tmp_path):
    proc = run_script("train.py", tmp_path, "attention=sideways", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # bad input, as every other: status 2
    assert "Could not find 'attention/sideways'" in proc.stderr and "read_write" in proc.stderr


def test_output_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_script("train.py", tmp_path, f"hydra.run.dir={blocker}/run", check=False)
    assert_one_line_error(proc, f"output folder {blocker}/run cannot be written", "hydra.run.dir=")


def test_data_folder_without_mnist_says_where_to_put_it(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # refused at once: no network wait
    with pytest.raises(UserError, match=r"MNIST \(train-images-idx3-ubyte.*\) is not in .*MNIST/raw.*put them there, or set paths\."):
        train(compose_config(f"data.data_dir={tmp_path}/empty"), str(tmp_path / "run"))
    assert not (tmp_path / "empty").exists()  # the failed lookup left no empty MNIST/raw folders behind


@pytest.mark.parametrize("problem", ["missing", "not a checkpoint", "truncated", "other sizes", "other batch size"])
def test_bad_checkpoint_is_named_with_the_reason(problem, trained_run, tiny_mnist, tmp_path):
    _, run, _ = trained_run
    good = run / "checkpoints" / "last.ckpt"
    path, overrides, fragment = tmp_path / "bad.ckpt", TINY_RUN, "is not a readable checkpoint"
    if problem == "missing":
        fragment = "does not exist"
    elif problem == "not a checkpoint":
        path.write_text("hello")
    elif problem == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif problem == "other sizes":
        path, overrides, fragment = good, [*TINY_RUN, "model.T=5"], "was trained with model.T=3 but this run has model.T=5"
    else:
        fragment = "trained with data.batch_size=20 but this run has data.batch_size=10"
        path, overrides = good, [*TINY_RUN, "data.batch_size=10"]
    with pytest.raises(UserError) as error:
        train(compose_config(*overrides, f"data.data_dir={tiny_mnist}", f"ckpt_path={path}"), str(tmp_path / "run"))
    assert f"ckpt_path={path}" in str(error.value) and fragment in str(error.value)


@pytest.mark.parametrize("prior", [[], ["model.learned_prior=true"], ["model.learned_prior=true", "model.prior_hidden=8"]],
                         ids=["same_model", "prior_added", "hidden_prior_added"])
def test_init_from_starts_a_new_run_from_a_checkpoints_weights(prior, trained_run, tiny_mnist, tmp_path):
    """init_from: the weights of a finished run (here exported, as the shipped models are), a fresh optimizer and
    epoch count; T sizes no weight, so it may differ, and a learned prior may be added (at its start, N(0, I)).
    One step at a tiny lr leaves the weights where they started."""
    from draw.export import export

    _, run, _ = trained_run
    source = export(run / "checkpoints" / "last.ckpt", tmp_path / "exported.ckpt")
    overrides = [*TINY_RUN, f"data.data_dir={tiny_mnist}", "model.T=4", "trainer.max_epochs=1",
                 "+trainer.limit_train_batches=1", "optim.lr=1e-7", *prior]
    train(compose_config(*overrides, f"init_from={tmp_path}/exported.ckpt"), str(tmp_path / "from"))
    train(compose_config(*overrides), str(tmp_path / "fresh"))
    started, fresh = (torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True) for name in ("from", "fresh"))
    assert started["global_step"] == 1 and started["epoch"] == 0 < source["epoch"]
    for name, weight in source["state_dict"].items():
        assert torch.allclose(started["state_dict"][name], weight, atol=1e-5), name
    assert ("model.prior.weight" in started["state_dict"]) == bool(prior)
    assert ("model.prior_mlp.2.weight" in started["state_dict"]) == (len(prior) == 2)
    for name in ("model.prior.weight", "model.prior_mlp.2.weight"):  # the added prior's output: N(0, I)
        assert started["state_dict"].get(name, torch.zeros(1)).abs().max() < 1e-5
    assert not torch.allclose(fresh["state_dict"]["model.q.weight"], source["state_dict"]["model.q.weight"], atol=1e-2)


def test_init_from_a_run_folder_is_the_checkpoint_its_test_used(trained_run, tmp_path):
    """A chain of legs as one command (init_from=runs/leg1): a finished run's folder names its best checkpoint, the
    one checkpoints/epoch*.ckpt it keeps. A folder holding none or several, or a folder as ckpt_path, is one line."""
    from draw.app import checkpoint_path

    _, run, _ = trained_run
    (best,) = (run / "checkpoints").glob("epoch*.ckpt")
    assert checkpoint_path(str(run), "init_from") == best
    assert read_checkpoint(checkpoint_path(str(run), "init_from"), key="init_from")["epoch"] >= 0
    several = tmp_path / "several" / "checkpoints"
    several.mkdir(parents=True)
    for name in ("epoch001-val_nll9.00.ckpt", "epoch002-val_nll8.00.ckpt"):
        shutil.copy(best, several / name)
    for folder, held in ((run / "checkpoints", "none"), (several.parent, "2 of them (epoch001-val_nll9.00.ckpt, ")):
        line = f"init_from={folder} is a folder, whose checkpoints/epoch*.ckpt (a run's best) are {held}"
        with pytest.raises(UserError, match=re.escape(line)):
            checkpoint_path(str(folder), "init_from")
    line = f"ckpt_path={run} is a folder: give a .ckpt file in it ({run}/checkpoints/last.ckpt resumes a run)"
    with pytest.raises(UserError, match=re.escape(line)):
        read_checkpoint(checkpoint_path(str(run), "ckpt_path"))


@pytest.mark.parametrize("case", ["other sizes", "other task", "train=false"])
def test_bad_init_from_is_one_line(case, trained_run, tiny_mnist, tmp_path):
    _, run, _ = trained_run
    last = run / "checkpoints" / "last.ckpt"
    overrides, fragment = {
        "other sizes": ([*TINY_RUN, "model.z_size=5"], f"init_from={last} does not fit this model: its model."),
        "other task": (["task=classify"], f"init_from='{last}' is not allowed: a classifier's checkpoint with task=classify"),
        "train=false": ([*TINY_RUN, "train=false", f"ckpt_path={last}"], "init_from starts a training run"),
    }[case]
    overrides = [*overrides, f"data.data_dir={tiny_mnist}", f"init_from={last}"]
    with pytest.raises(UserError) as error:
        train(compose_config(*overrides), str(tmp_path / "run"))
    assert fragment in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_killed_run_resumes_to_the_same_number_of_steps(tiny_mnist, tmp_path):
    overrides = [f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_epochs=10", "checkpoint_every_n_steps=5"]
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(last, weights_only=True)["global_step"]
    assert killed_at < 100, "the run finished before it could be killed"
    for ckpt in (run / "checkpoints").glob("*.ckpt"):  # no half-written checkpoint left behind
        read_checkpoint(ckpt)

    resumed = tmp_path / "resumed"
    run_script("train.py", tmp_path, *overrides, f"ckpt_path={last}", f"hydra.run.dir={resumed}")
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert (metrics["epochs"], metrics["steps"]) == (10, 100)  # as an uninterrupted run: 10 epochs of 10 steps


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopped_run_saves_says_how_to_resume_and_resumes_bit_identical(signum, tiny_mnist, tmp_path):
    run = tmp_path / "run"
    # last.ckpt every 7 steps: its first appearance says training is under way (a condition, not a sleep)
    overrides = [f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_epochs=10", "checkpoint_every_n_steps=7",
                 "trainer.deterministic=true"]
    # Ctrl-C as a terminal sends it: to a process that takes SIGINT, which a shell's background job (pytest ... &) does
    # not. A small launcher takes SIGINT back and execs train.py; Popen's preexec_fn would do the same in the forked
    # child, where, with torch's threads in this process, it can deadlock before the exec (Python's documentation warns).
    takes_sigint = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.executable, sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", takes_sigint, sys.executable, str(ROOT / "train.py"), *overrides,
                             f"hydra.run.dir={run}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=120)
    # A scheduler must not read a stopped run as finished: Lightning's 1 after Ctrl-C, 128 + 15 after SIGTERM.
    assert proc.returncode == {signal.SIGINT: 1, signal.SIGTERM: 143}[signum], output[-2000:]
    resume = f"resume with: python train.py {' '.join(overrides)} hydra.run.dir={run} ckpt_path={last}"
    assert f"interrupted: saved {last}" in output and resume in output, output[-2000:]
    if signum == signal.SIGINT:  # held to the batch's end, where a resumed run takes no batch twice
        assert "Ctrl-C: stopping when this batch ends" in output, output[-2000:]
    stopped_at = read_checkpoint(last)["global_step"]
    assert 0 < stopped_at < 100, "the run finished before it could be stopped"

    resumed = run_script("train.py", tmp_path, *resume.removeprefix("resume with: python train.py ").split())
    if stopped_at % 10:  # mid-epoch: the bar names the epoch and counts on from where the run stopped
        assert f"Epoch {stopped_at // 10}: " in resumed.stdout and f"| {stopped_at % 10 + 1}/10 [" in resumed.stdout, resumed.stdout[-2000:]
        assert not re.search(r"Training: \|.*\| [1-9][0-9]*/\?", resumed.stdout)  # Lightning's bar: no epoch, no total
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["epochs"], metrics["steps"]) == (10, 100)  # as an uninterrupted run: 10 epochs of 10 steps
    assert "interrupted: saved" in (run / "train.log").read_text()  # the project's lines reach train.log
    run_script("train.py", tmp_path, *overrides, f"hydra.run.dir={tmp_path}/uninterrupted")
    uninterrupted = json.loads((tmp_path / "uninterrupted" / "metrics.json").read_text())
    assert (metrics["test/nll"], metrics["val/nll_best"]) == (uninterrupted["test/nll"], uninterrupted["val/nll_best"])


class StopBeforeValidation(Callback):
    """Ctrl-C after the epoch's last step, before its validation: where a kill loses the most."""

    def on_validation_start(self, trainer, module):
        if trainer.global_step == 10 and not trainer.sanity_checking:
            raise KeyboardInterrupt


class Validations(Callback):
    def __init__(self):
        self.at_steps = []

    def on_validation_end(self, trainer, module):
        if not trainer.sanity_checking:
            self.at_steps.append(trainer.global_step)


def test_resume_after_a_kill_between_the_last_step_and_validation_keeps_that_validation(tiny_mnist, tmp_path):
    from draw.callbacks import LastCheckpoint

    data = lambda: MNISTDataModule(data_dir=str(tiny_mnist), batch_size=20, val_size=40)  # noqa: E731 -- 10 steps an epoch
    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    every_5 = LastCheckpoint(dirpath=tmp_path, every_n_steps=5)
    with pytest.raises(SystemExit):  # Lightning's exit after a KeyboardInterrupt
        Trainer(max_epochs=3, callbacks=[every_5, StopBeforeValidation()], **quiet).fit(tiny_module(), data())
    assert read_checkpoint(tmp_path / "last.ckpt")["global_step"] == 5  # not 10, the epoch's last batch
    validations = Validations()
    trainer = Trainer(max_epochs=3, callbacks=[validations], num_sanity_val_steps=0, **quiet)
    trainer.fit(tiny_module(), data(), ckpt_path=tmp_path / "last.ckpt", weights_only=True)
    assert validations.at_steps == [10, 20, 30] and trainer.global_step == 30


class SigtermDuringValidation(Callback):
    """A real SIGTERM to this process at the first batch of the validation at step 10 (of two batches)."""

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if trainer.global_step == 10 and batch_idx == 0 and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_validation_stops_after_it_and_resumes_with_every_validation(tiny_mnist, tmp_path):
    from pytorch_lightning.callbacks import EarlyStopping
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from draw.callbacks import SaveOnInterrupt

    data = lambda: MNISTDataModule(data_dir=str(tiny_mnist), batch_size=20, val_size=40)  # noqa: E731 -- 10 steps, 2 validation batches
    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                 num_sanity_val_steps=0, enable_checkpointing=False)
    before = Validations()
    with pytest.raises(SIGTERMException):
        Trainer(max_epochs=3, callbacks=[SaveOnInterrupt(tmp_path), SigtermDuringValidation(), before],
                **quiet).fit(tiny_module(), data())
    assert before.at_steps == [10]  # the validation under way ran to its end
    assert read_checkpoint(tmp_path / "last.ckpt")["global_step"] == 10
    after = Validations()  # early stopping needs each epoch's val/nll: it crashed on a checkpoint taken mid-validation
    trainer = Trainer(max_epochs=3, callbacks=[after, EarlyStopping("val/nll")], **quiet)
    trainer.fit(tiny_module(), data(), ckpt_path=tmp_path / "last.ckpt", weights_only=True)
    assert after.at_steps == [20, 30] and trainer.global_step == 30


class StopDuringValidation(Callback):
    """A second Ctrl-C (which stops at once) in the middle of the validation at step 10."""

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if trainer.global_step == 10 and batch_idx == 1 and not trainer.sanity_checking:
            raise KeyboardInterrupt


def test_a_stop_during_validation_keeps_the_last_checkpoint_rather_than_one_taken_there(tiny_mnist, tmp_path):
    from draw.callbacks import LastCheckpoint, SaveOnInterrupt

    data = MNISTDataModule(data_dir=str(tiny_mnist), batch_size=20, val_size=40)
    callbacks = [LastCheckpoint(tmp_path, every_n_steps=5), SaveOnInterrupt(tmp_path), StopDuringValidation()]
    with pytest.raises(SystemExit):  # Lightning's exit after a KeyboardInterrupt
        Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                default_root_dir=tmp_path, callbacks=callbacks).fit(tiny_module(), data)
    assert read_checkpoint(tmp_path / "last.ckpt")["global_step"] == 5

class Poison(Callback):
    """Makes the loss (a NaN pixel in the batch) or one gradient non-finite at the given batches."""

    def __init__(self, batches, where="loss"):
        self.batches, self.where = set(batches), where

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.where == "loss" and batch_idx in self.batches:
            batch[0, 0, 0] = float("nan")

    def on_after_backward(self, trainer, module):
        if self.where == "gradient" and trainer.fit_loop.epoch_loop.batch_idx in self.batches:
            module.model.q.weight.grad[0, 0] = float("inf")


def fit_tiny(tiny_mnist, tmp_path, poison, max_nonfinite_steps=10):
    module = tiny_module()
    module.max_nonfinite_steps = max_nonfinite_steps
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[poison], default_root_dir=tmp_path)
    trainer.fit(module, MNISTDataModule(data_dir=str(tiny_mnist), batch_size=20, val_size=40))
    return module


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_non_finite_step_is_skipped_and_counted(where, tiny_mnist, tmp_path):
    module = fit_tiny(tiny_mnist, tmp_path, Poison({3, 7}, where))
    assert module.skipped_steps == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_non_finite_steps_in_a_row_stop_with_a_checkpoint(tiny_mnist, tmp_path):
    with pytest.raises(NonFiniteTraining, match=r"3 steps in a row had a non-finite loss .* lower optim.lr"):
        fit_tiny(tiny_mnist, tmp_path, Poison(range(2, 10)), max_nonfinite_steps=3)
    saved = read_checkpoint(tmp_path / "checkpoints" / "before_nonfinite.ckpt")
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())


def test_same_seed_and_config_give_the_same_run_to_the_bit(tiny_mnist, tmp_path):
    cfg = compose_config(f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.deterministic=true",
                         "trainer.enable_progress_bar=false")
    first, second = (train(cfg, str(tmp_path / name)) for name in ("a", "b"))
    for key in ("test/nll", "test/lx", "test/lz", "val/nll_best"):
        assert first[key] == second[key], key
    a, b = (torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for name in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_write_that_fails_keeps_the_previous_one_and_stops_with_one_line(tiny_mnist, tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = train(compose_config(f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_epochs=1",
                                 "trainer.enable_progress_bar=false"), str(run))
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError) as error:
        train(compose_config(f"data.data_dir={tiny_mnist}", *TINY_RUN, f"ckpt_path={last}", "checkpoint_every_n_steps=2",
                             "trainer.enable_progress_bar=false"), str(run))
    assert f"writing {last} failed (No space left on device): the previous last.ckpt is intact" in str(error.value)
    assert "\n" not in str(error.value) and last.read_bytes() == before and first["steps"] == 10
    assert not list(run.glob("checkpoints/*.partial"))


class KilledAt(Callback):
    """Stands in for a kill (SIGKILL, a machine going away) at one moment of a run: an error no callback saves on."""

    def __init__(self, hook: str, step: int):
        self.hook, self.step = hook, step
        setattr(self, hook, self._maybe_die)

    def _maybe_die(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError(f"killed in {self.hook} at step {self.step}")


EXACT_RUNS = {
    "generate": [*TINY_RUN, "trainer.max_epochs=3"],
    "classify": ["task=classify", "data.size=40", "data.distractors=2", "data.val_size=40", "data.batch_size=20",
                 "model.glimpses=2", "model.read_n=4", "model.hidden_size=16", "trainer.max_epochs=3"],
}
# Mid-epoch (last.ckpt 2 steps back), during validation, between epochs, and twice in the last epoch.
KILLS = [("on_train_batch_end", 5), ("on_validation_batch_end", 10), ("on_train_epoch_end", 20),
         ("on_train_batch_end", 22), ("on_train_batch_start", 27)]


@pytest.mark.parametrize("task", ["generate", "classify"])
def test_a_run_killed_anywhere_and_resumed_ends_bit_identical(task, tiny_mnist, tmp_path, monkeypatch):
    """The same batches, binarization, noise, optimizer and schedule after every resume: on the CPU with
    trainer.deterministic=true the final weights and metrics equal the uninterrupted run's to the bit."""
    import draw.run

    overrides = [f"data.data_dir={tiny_mnist}", *EXACT_RUNS[task], "checkpoint_every_n_steps=3", "trainer.deterministic=true",
                 "trainer.enable_progress_bar=false"]
    uninterrupted = train(compose_config(*overrides), str(tmp_path / "a"))
    run, build_callbacks = tmp_path / "b", draw.run.build_callbacks
    last = run / "checkpoints" / "last.ckpt"
    for hook, step in KILLS:
        killer = KilledAt(hook, step)
        monkeypatch.setattr(draw.run, "build_callbacks", lambda cfg, out, killer=killer: [*build_callbacks(cfg, out), killer])
        with pytest.raises(RuntimeError, match="killed"):
            train(compose_config(*overrides, *([f"ckpt_path={last}"] if last.exists() else [])), str(run))
    monkeypatch.setattr(draw.run, "build_callbacks", build_callbacks)
    resumed = train(compose_config(*overrides, f"ckpt_path={last}"), str(run))
    for key in [k for k in uninterrupted if k.startswith(("test/", "val/"))] + ["steps"]:
        assert resumed[key] == uninterrupted[key], key
    a, b = (torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for folder in (tmp_path / "a", run))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_ends_bit_identical(tiny_mnist, tmp_path):
    overrides = [f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_epochs=20", "checkpoint_every_n_steps=3",
                 "trainer.deterministic=true", "trainer.enable_progress_bar=false"]
    run_script("train.py", tmp_path, *overrides, f"hydra.run.dir={tmp_path}/a")
    run, rng, kills = tmp_path / "b", np.random.default_rng(0), 0
    last = run / "checkpoints" / "last.ckpt"
    while kills < 3:
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run}",
                                 *([f"ckpt_path={last}"] if last.exists() else [])], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        step_before = torch.load(last, weights_only=True)["global_step"] if last.exists() else -1
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and (
                not last.exists() or torch.load(last, weights_only=True)["global_step"] == step_before):
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 1.5))  # somewhere in the steps, validations or epoch ends after a new last.ckpt
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    run_script("train.py", tmp_path, *overrides, f"hydra.run.dir={run}", f"ckpt_path={last}")
    a, b = (json.loads((folder / "metrics.json").read_text()) for folder in (tmp_path / "a", run))
    assert b["steps"] == a["steps"] == 200 and b["test/nll"] == a["test/nll"] and b["val/nll_best"] == a["val/nll_best"]
    weights = [torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for folder in (tmp_path / "a", run)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_slurm_job_warned_of_its_time_limit_saves_requeues_itself_and_resumes_bit_identical(tiny_mnist, tmp_path):
    """What submitit does in a SLURM job (hydra/launcher=slurm) stood in for: its handler of the warning signal runs
    `scontrol requeue $SLURM_JOB_ID` (a stand-in scontrol on the PATH records it) and exits; the requeued job resumes."""
    from draw.callbacks import PREEMPTION_SIGNAL

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "PYTHONUNBUFFERED": "1"}
    overrides = [f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_epochs=10", "checkpoint_every_n_steps=7",
                 "trainer.deterministic=true", f"hydra.run.dir={tmp_path}/run"]
    submitit_like = ("import os, runpy, signal, subprocess, sys\n"
                     "def requeue(signum, frame):\n"
                     "    subprocess.check_call(['scontrol', 'requeue', os.environ['SLURM_JOB_ID']])\n"
                     "    sys.exit(-1)\n"
                     f"signal.signal({int(PREEMPTION_SIGNAL)}, requeue)\n"
                     "sys.argv = sys.argv[1:]\n"
                     "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    proc = subprocess.Popen([sys.executable, "-c", submitit_like, str(ROOT / "train.py"), *overrides], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(PREEMPTION_SIGNAL)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and f"interrupted: saved {last}" in output, output[-2000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert 0 < read_checkpoint(last)["global_step"] < 100, "the run finished before it was warned"
    run_script("train.py", tmp_path, *overrides, f"ckpt_path={last}")  # the requeued job (sweep jobs find last.ckpt)
    run_script("train.py", tmp_path, *overrides[:-1], f"hydra.run.dir={tmp_path}/uninterrupted")
    resumed, uninterrupted = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("run", "uninterrupted"))
    assert resumed["steps"] == 100
    assert (resumed["test/nll"], resumed["val/nll_best"]) == (uninterrupted["test/nll"], uninterrupted["val/nll_best"])
