import csv
import importlib.util
import json

import pytest
import torch
from hydra.utils import instantiate

from conftest import ROOT, TINY_RUN, compose_config, job_folder, run_script
from draw.config import configured_loggers
from draw.module import DRAWModule
from draw.report import val_curve, write_summary
from draw.run import build_callbacks, build_loggers, build_module, model_hparams

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
# The groups whose every option runs with the defaults of the others (model and data options need their task's).
GROUPS = ["attention", "experiment", "debug", "callbacks", "logger", "optim", "scheduler", "task"]
OPTIONS = [f"{group}={p.stem}" for group in GROUPS for p in sorted((ROOT / "conf" / group).glob("*.yaml"))]


@pytest.mark.parametrize("option", OPTIONS)
def test_every_config_composes_and_instantiates(option, tmp_path):
    cfg = compose_config(option)
    if any(importlib.util.find_spec(logger.requires) is None for logger in configured_loggers(cfg).values() if "requires" in logger):
        pytest.skip(f"{option}: its package is not installed")
    module = build_module(cfg)
    datamodule = instantiate(cfg.data)
    callbacks = build_callbacks(cfg, tmp_path)
    trainer = instantiate(cfg.trainer, logger=build_loggers(cfg, tmp_path) or False, callbacks=callbacks)
    assert all(callback in trainer.callbacks for callback in callbacks)
    assert all(getattr(module.model.cfg, k) == v for k, v in model_hparams(cfg).items() if k != "architecture")
    assert datamodule.hparams.batch_size == cfg.data.batch_size
    assert trainer.max_epochs == cfg.trainer.max_epochs or trainer.fast_dev_run


def test_experiments_hold_the_paper_and_seed_settings():
    attention = compose_config("experiment=paper_mnist_attention")
    none = compose_config("experiment=paper_mnist_noattention")
    seed = compose_config("experiment=seed_tf")
    for cfg in (attention, none):
        assert (cfg.model.T, cfg.model.z_size, cfg.model.enc_size, cfg.model.dec_size) == (64, 100, 256, 256)
    assert (attention.attention.read_n, attention.attention.write_n) == (2, 5)
    assert attention.attention.read_attention and attention.attention.write_attention
    assert not none.attention.read_attention and not none.attention.write_attention
    assert (seed.model.T, seed.model.z_size, seed.attention.read_n, seed.attention.write_n) == (10, 10, 5, 5)
    assert list(seed.optim.betas) == [0.5, 0.999] and seed.trainer.gradient_clip_val == 5.0
    # The plain defaults are the paper's attention model with its training recipe (docs/experiments/recipe.md).
    plain = compose_config()
    assert plain.model == attention.model and plain.attention == attention.attention and plain.data == attention.data
    assert (plain.optim, plain.scheduler, plain.compile) == (attention.optim, attention.scheduler, True)
    assert plain.optim.lr == 1.5e-3 and plain.scheduler.name == "cosine" and plain.data.batch_size == 50
    assert plain.attention.read_init.stride == 12 and plain.attention.write_init.gamma == 0.05 and plain.model.forget_bias == 1
    # The model without attention keeps the parts of the recipe it was measured with.
    assert none.optim.lr == 1.5e-3 and none.scheduler.name == "cosine"
    assert none.model.forget_bias is None and none.data.batch_size == 100
    # Two-digit MNIST: the MNIST model's sizes and recipe (its write's start too), its read's start spread over 60 x 60.
    two = compose_config("experiment=paper_two_digit_mnist")
    sizes = lambda cfg: (cfg.model.T, cfg.model.z_size, cfg.model.enc_size, cfg.model.dec_size, cfg.model.forget_bias)  # noqa: E731
    assert sizes(two) == sizes(plain) and two.optim == plain.optim and two.scheduler == plain.scheduler
    assert (two.model.height, two.data.batch_size, two.attention.read_init.stride) == (60, 50, 26)


def test_train_runs_end_to_end_and_leaves_the_working_folder_alone(trained_run):
    cwd, run, stdout = trained_run
    assert [p.name for p in cwd.iterdir()] == ["outputs"]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run / "checkpoints").glob("epoch*-val_nll*.ckpt"))) == 1
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "val/nll" in scalars and "hp_metric" not in scalars  # not Lightning's -1
    assert {e.value for e in events.Scalars("train/skipped_steps")} == {0.0}  # logged even when nothing is skipped
    # The project's own lines land in train.log as well as on the terminal.
    log = (run / "train.log").read_text()
    assert "if this run dies, resume it with: python train.py" in log and "test NLL bound:" in log
    nll = float(stdout.split("test NLL bound: ")[1].split()[0])
    assert nll < 543.4  # 784 ln 2: better than the untrained, all-0.5 canvas


def test_checkpoint_alone_rebuilds_the_model(trained_run):
    _, run, _ = trained_run
    module = DRAWModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert type(module.hparams.model) is dict and module.hparams.model["T"] == 3
    assert module.model.cfg.read_attention and module.model.cfg.write_n == 5


def test_resume_continues_from_the_checkpoint(trained_run, tiny_mnist, tmp_path):
    _, run, _ = trained_run
    resumed = tmp_path / "resumed"
    run_script("train.py", tmp_path, f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_epochs=3",
               f"ckpt_path={run}/checkpoints/last.ckpt", f"hydra.run.dir={resumed}")
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert (metrics["epochs"], metrics["steps"]) == (3, 30)  # one more epoch of 10 steps, not three


def test_ckpt_path_last_resumes_the_newest_run_under_outputs(trained_run, tiny_mnist, tmp_path):
    cwd, _, _ = trained_run
    resumed = tmp_path / "resumed"
    proc = run_script("train.py", cwd, f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_epochs=3", "ckpt_path=last",
                      f"hydra.run.dir={resumed}")
    assert json.loads((resumed / "metrics.json").read_text())["steps"] == 30, proc.stdout[-2000:]


def test_metrics_json_sums_the_run_up(trained_run):
    _, run, stdout = trained_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/nll"] == pytest.approx(metrics["test/lx"] + metrics["test/lz"], rel=1e-5)
    assert f"test NLL bound: {metrics['test/nll']:.2f}" in stdout
    assert (metrics["epochs"], metrics["steps"]) == (2, 20)  # 200 train images, batch 20, 2 epochs
    assert metrics["params"] == sum(p.numel() for p in DRAWModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt").parameters())
    assert metrics["wall_time_s"] > 0 and metrics["train_images_per_s"] > 0
    assert "model.T=3" in metrics["overrides"] and metrics["checkpoint"].endswith(".ckpt")


def test_evaluate_a_checkpoint_without_training(trained_run, tiny_mnist, tmp_path):
    _, run, _ = trained_run
    best = next((run / "checkpoints").glob("epoch*.ckpt"))
    proc = run_script("train.py", tmp_path, "train=false", f"ckpt_path={best}", f"data.data_dir={tiny_mnist}",
                      "data.val_size=40", "eval.iw_samples=4", f"hydra.run.dir={tmp_path}/eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["steps"] == 0 and metrics["train_images_per_s"] is None
    assert "test/iw_nll" in metrics and "importance-weighted bound, K=4" in proc.stdout
    assert not (tmp_path / "eval" / "checkpoints").exists()


def test_a_checkpoint_evaluates_to_the_same_bound_whatever_the_seed_with_its_standard_error(trained_run, tiny_mnist, tmp_path):
    from draw.run import train

    _, run, _ = trained_run
    evaluate = lambda *more: train(compose_config(  # noqa: E731
        "train=false", f"ckpt_path={run}/checkpoints/last.ckpt", f"data.data_dir={tiny_mnist}", *TINY_RUN, *more,
        "trainer.enable_progress_bar=false"), str(tmp_path / "_".join(more or ["plain"])))
    plain, other_seed, other_eval_seed = evaluate(), evaluate("seed=7"), evaluate("eval.seed=7")
    assert plain["test/nll"] == other_seed["test/nll"]  # the run's seed (and what ran before) does not move it
    assert plain["test/nll"] != other_eval_seed["test/nll"]  # its own draws of z do, by about the standard error
    assert 0 < plain["test/nll_mc_stderr"] < 0.05 * plain["test/nll"]
    assert abs(plain["test/nll"] - other_eval_seed["test/nll"]) < 6 * plain["test/nll_mc_stderr"]


def test_two_job_sweep_writes_its_summary(tiny_mnist, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script("train.py", tmp_path, "-m", "attention=none,read_write", f"data.data_dir={tiny_mnist}", *TINY_RUN,
                      f"hydra.sweep.dir={sweep}")
    assert proc.stdout.count("test NLL bound:") == 2
    assert "Directory watcher" not in proc.stdout + proc.stderr  # TensorBoard's reader chatter while summing up
    for noise in ("litlogger", "LeafSpec", "FLOPs"):
        assert noise not in proc.stdout + proc.stderr
    none, read_write = job_folder(sweep, "attention=none"), job_folder(sweep, "attention=read_write")
    for job in (none, read_write):
        assert (job / "checkpoints" / "last.ckpt").is_file()
    assert torch.load(none / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["model"]["read_attention"] is False

    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["overrides"] for r in rows) == ["attention=none", "attention=read_write"]
    nlls = [float(r["test/nll"]) for r in rows]
    assert nlls == sorted(nlls) and all(r["status"] == "completed" for r in rows)
    assert "| attention=read_write |" in (sweep / "summary.md").read_text()
    assert (sweep / "curves.png").stat().st_size > 0
    # One validation an epoch: the curves compare jobs at equal epochs (10 steps each).
    assert [(step, epoch) for step, epoch, _ in val_curve(none)] == [(10, 1), (20, 2)]

    # The report command rebuilds it all from the folder alone, also for a job that never finished.
    summary_md = (sweep / "summary.md").read_text()
    for name in ("summary.md", "summary.csv", "curves.png"):
        (sweep / name).unlink()
    (read_write / "metrics.json").unlink()
    rows = write_summary(sweep)
    assert [r["status"] for r in rows] == ["completed", "unfinished"]
    assert rows[1]["best val/nll"] is not None and (sweep / "curves.png").is_file()
    assert summary_md.splitlines()[:6] == (sweep / "summary.md").read_text().splitlines()[:6]


@pytest.mark.slow
def test_compiled_training_reaches_the_eager_runs_numbers(trained_run, tiny_mnist, tmp_path):
    """compile=true (training, evaluation, the pictures' sampling) is the same run as the eager one."""
    _, eager_run, _ = trained_run
    compiled_run = tmp_path / "compiled"
    run_script("train.py", tmp_path, f"data.data_dir={tiny_mnist}", *TINY_RUN, "compile=true",
               "compile_steps_per_call=2", f"hydra.run.dir={compiled_run}")  # T=3: calls of 2 and 1 steps
    eager, compiled = (json.loads((run / "metrics.json").read_text()) for run in (eager_run, compiled_run))
    assert compiled["steps"] == eager["steps"] == 20
    for key in ("test/nll", "test/lx", "test/lz", "val/nll_best"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-3), key
