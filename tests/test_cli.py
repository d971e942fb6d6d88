"""What a newcomer types first: help pages, debug runs, loggers, max_epochs=-1, run folders, a wheel install."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY_RUN, run_script


@pytest.mark.parametrize("script,says,lists", [
    ("train.py", "Train DRAW", ["attention", "none | read | write | read_write", "experiment", "Examples:"]),
    ("sample.py", "Watch a trained DRAW draw", ["mode", "prior (default", "reconstruct", "data.data_dir", "Examples:"]),
])
def test_each_script_has_its_own_help_page(script, says, lists, tmp_path):
    page = run_script(script, tmp_path, "--help").stdout
    assert page.startswith(says) and all(item in page for item in lists), page
    if script == "sample.py":
        assert "experiment" not in page  # train.py's groups are not sample.py's
    else:  # the page is written by hand: every group and option in conf/ must be on it
        for group in (p for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "hydra"):
            assert f"\n  {group.name} " in page, group.name
            assert all(option.stem in page for option in group.glob("*.yaml")), group.name


@pytest.mark.parametrize("module", ["benchmark", "figures", "export", "report"])
def test_each_module_script_answers_help_with_its_usage(module, tmp_path):
    # Not read as an override (benchmark: a Hydra parse error), a data folder (figures) or a sweep folder (report)
    proc = subprocess.run([sys.executable, "-m", f"draw.{module}", "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and f"python -m draw.{module}" in proc.stdout and not proc.stderr.strip(), proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_max_epochs_minus_one_trains_until_another_limit_stops_it(tiny_mnist, tmp_path):
    run = tmp_path / "run"
    run_script("train.py", tmp_path, f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_epochs=-1",
               "+trainer.max_steps=25", f"hydra.run.dir={run}")
    assert json.loads((run / "metrics.json").read_text())["steps"] == 25


def test_debug_fdr_runs_one_batch_of_each_split_where_paths_says(tiny_mnist, tmp_path):
    run_script("train.py", tmp_path, f"paths.data_dir={tiny_mnist}", *TINY_RUN, "debug=fdr", f"paths.output_dir={tmp_path}/runs")
    (run,) = (tmp_path / "runs").glob("*/*")  # <paths.output_dir>/DATE/TIME, and nothing in the working folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 1 and metrics["status"] == "completed"


@pytest.mark.parametrize("logger,writes,leaves_out", [
    ("csv", ["csv/metrics.csv"], ["tensorboard"]),
    ("many", ["csv/metrics.csv", "tensorboard"], []),
    ("none", [], ["csv", "tensorboard"]),
])
def test_logger_choice_and_the_validation_history_every_run_keeps(logger, writes, leaves_out, tiny_mnist, tmp_path):
    run = tmp_path / "run"
    run_script("train.py", tmp_path, f"data.data_dir={tiny_mnist}", *TINY_RUN, f"logger={logger}", f"hydra.run.dir={run}")
    assert all((run / path).exists() for path in writes) and not any((run / path).exists() for path in leaves_out)
    from draw.report import val_curve

    assert [(step, epoch) for step, epoch, _ in val_curve(run)] == [(10, 1), (20, 2)]


@pytest.mark.slow
def test_a_wheel_install_composes_and_runs_from_outside_the_repository(tmp_path):
    import shutil

    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    for name in ("conf", "draw", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "wheel", source], check=True)
    (wheel,) = (tmp_path / "wheel").glob("draw-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", tmp_path / "site", wheel], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    composed = subprocess.run([sys.executable, "-c", "from draw.run import CONF, compose_config; "
                               "print(CONF, compose_config(['attention=none']).attention.read_attention)"],
                              cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert composed.strip() == f"{tmp_path / 'site' / 'draw' / 'conf'} False"
    page = subprocess.run([sys.executable, tmp_path / "site" / "bin" / "draw-train", "--help"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, check=True).stdout
    assert page.startswith("Train DRAW") and "Usage: draw-train" in page and "python train.py" not in page


def test_two_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    from draw.app import unique_folder

    same_second = str(tmp_path / "outputs" / "2026-11-29" / "12-00-00")
    first = unique_folder(same_second)
    unique_folder.cache_clear()  # what a second process sees: its own cache, the first one's folder on disk
    second = unique_folder(same_second)
    assert (first, second) == (same_second, same_second + "-2") and Path(second).is_dir()


def test_job_folders_of_different_overrides_differ_and_never_nest():
    from draw.app import job_folder

    paths = [job_folder("init_from=runs/a_b/last.ckpt"), job_folder("init_from=runs/a/b_last.ckpt")]
    assert paths[0] != paths[1] and "/" not in paths[0] + paths[1]
    long = [job_folder(f"model.T={T}," + "x" * 200) for T in (1, 2)]
    assert long[0] != long[1] and max(map(len, long)) < 255
    assert job_folder("attention=none,model.T=16") == "attention=none,model.T=16" and job_folder("") == "defaults"


def test_job_folders_name_what_the_sweep_varies_first(tmp_path):
    from omegaconf import OmegaConf

    from draw.app import job_folder

    limits = "++trainer.limit_test_batches=5,++trainer.limit_train_batches=20"
    # sweep=paper's sweeper params, then a comma-separated key of the command line (Hydra's multirun.yaml)
    paper = OmegaConf.create({"hydra": {"sweeper": {"params": {"experiment": "a,b"}}, "sweep": {"dir": str(tmp_path)}}})
    assert job_folder(f"{limits},experiment=a,sweep=paper", paper) == f"experiment=a,{limits},sweep=paper"
    OmegaConf.save({"hydra": {"overrides": {"task": ["model.T=4,8", "callbacks=[default,lr_monitor]", "+x=1,2"]}}},
                   tmp_path / "multirun.yaml")
    swept = OmegaConf.create({"hydra": {"sweeper": {"params": None}, "sweep": {"dir": str(tmp_path)}}})
    assert (job_folder("+x=2,callbacks=[default,lr_monitor],model.T=8", swept)
            == "model.T=8,+x=2,callbacks=[default,lr_monitor]")


def test_callbacks_are_added_and_tuned_from_the_command_line_and_early_stopping_stops(tiny_mnist, tmp_path):
    from draw.run import compose_config

    for overrides in (["callbacks=default", "callbacks.early_stopping.patience=5"], ["callbacks=[default,lr_monitor]"],
                      ["task=classify", "+callbacks=lr_monitor"]):
        assert {"best_checkpoint", "last_checkpoint", "early_stopping"} <= set(compose_config(overrides).callbacks)
    run = tmp_path / "run"
    # patience 0 and a learning rate of ~0: within a few validations one is no better, and the run stops.
    run_script("train.py", tmp_path, f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_epochs=10", "optim.lr=1e-12",
               "+callbacks=lr_monitor", "callbacks.early_stopping.patience=0", f"hydra.run.dir={run}")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] < 10 and metrics["train_images_per_s"] > 0


def test_callbacks_none_trains_and_tests_the_final_weights_without_checkpoints(tiny_mnist, tmp_path):
    run = tmp_path / "run"
    stdout = run_script("train.py", tmp_path, f"data.data_dir={tiny_mnist}", *TINY_RUN, "callbacks=none",
                        f"hydra.run.dir={run}").stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert not (run / "checkpoints").exists() and "resume it with" not in stdout
    assert metrics["status"] == "completed" and metrics["checkpoint"] == "" and metrics["val/nll_best"] is None
    assert metrics["test/nll"] > 0 and (run / "validation.csv").is_file()


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("wandb") is None, reason="wandb is not installed (.[wandb])")
def test_wandb_logger_runs_offline_into_the_run_folder(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    run_script("train.py", tmp_path, f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_epochs=1", "logger=wandb",
               "logger.offline=true", f"hydra.run.dir={run}")
    assert (run / "wandb").is_dir() and not (tmp_path / "wandb").exists()
    pictures = {p.name.split("_")[0] for p in run.glob("wandb/**/media/images/*.png")}
    assert {"samples", "reconstructions"} <= pictures, sorted(run.glob("wandb/**/*"))


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("mlflow") is None, reason="mlflow is not installed (.[mlflow])")
def test_mlflow_logger_keeps_its_store_and_pictures_in_the_run_folder(tiny_mnist, tmp_path, monkeypatch):
    import sqlite3

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    run_script("train.py", tmp_path, f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_epochs=1", "logger=mlflow",
               f"hydra.run.dir={run}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing in the working folder (no ./mlruns, ./mlartifacts)
    keys = {key for (key,) in sqlite3.connect(run / "mlruns" / "mlflow.db").execute("select key from metrics")}
    assert {"train/loss", "val/nll", "test/nll"} <= keys
    assert {p.parent.name for p in run.glob("mlruns/artifacts/**/*.png")} >= {"samples", "reconstructions"}


def test_the_shipped_models_have_names_that_work_from_any_folder(tiny_mnist, tmp_path):
    from draw.app import PRETRAINED_DIR, checkpoint_path
    from draw.errors import UserError

    assert checkpoint_path("pretrained:draw_mnist", "init_from") == PRETRAINED_DIR / "draw_mnist.ckpt"
    with pytest.raises(UserError, match="init_from=pretrained:nope is not a shipped model: use one of pretrained:draw_mnist"):
        checkpoint_path("pretrained:nope", "init_from")
    proc = run_script("train.py", tmp_path, "train=false", "ckpt_path=pretrained:draw_mnist", "compile=false",
                      f"data.data_dir={tiny_mnist}", f"hydra.run.dir={tmp_path}/run")
    assert "test NLL bound" in proc.stdout
    # train.py's and sample.py's help and the usage guide name every model that ships
    for page in ("conf/hydra/help/train.yaml", "conf/hydra/help/sample.yaml", "docs/usage.md"):
        listed = " ".join((ROOT / page).read_text().split())
        assert all(re.search(rf"\b{p.stem}\b", listed) for p in PRETRAINED_DIR.glob("*.ckpt")), page


def test_help_and_resume_lines_name_the_command_that_was_run(monkeypatch):
    from draw.app import command, command_line

    monkeypatch.setattr("sys.argv", ["/venv/bin/draw-train", "--help"])
    assert command("train") == "draw-train"
    monkeypatch.setattr("sys.argv", ["train.py"])
    assert command("train") == "python train.py" and command("sample") == "python sample.py"
    # a printed resume line pastes into a shell as the arguments it was made from
    args = ["attention.write_init={stride: 4, var: 4}", "optim.lr=5e-4", "hydra.run.dir=runs/a b"]
    line = command_line("train", args)
    assert shlex.split(line) == ["python", "train.py", *args]
    assert " optim.lr=5e-4 " in line  # what needs no quotes gets none
