"""Beyond one process: DDP on CPU, parallel sweeps, hyper-parameter search, the SLURM launcher config."""
import csv
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY_RUN, run_script
from draw.run import compose_config

pytestmark = pytest.mark.slow


def test_ddp_on_two_cpu_processes_keeps_the_global_batch_and_logs_once(tiny_mnist, tmp_path):
    run = tmp_path / "ddp"
    proc = run_script("train.py", tmp_path, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                      f"data.data_dir={tiny_mnist}", *TINY_RUN, f"hydra.run.dir={run}")
    assert proc.stdout.count("test NLL bound:") == 1  # rank 0 alone reports and writes
    metrics = json.loads((run / "metrics.json").read_text())
    # Global batch 20 = 2 processes x 10: 200 images are 10 steps an epoch, as in one process.
    assert metrics["steps"] == 20
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("val/nll")) == 2 and len(events.Scalars("test/nll")) == 1
    assert len(list((run / "checkpoints").glob("*.ckpt"))) == 2


def test_parallel_sweep_with_joblib(tiny_mnist, tmp_path):
    sweep = tmp_path / "sweep"
    run_script("train.py", tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "attention=none,write",
               f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}")
    with open(sweep / "summary.csv") as f:
        assert sorted(r["overrides"] for r in csv.DictReader(f)) == ["attention=none", "attention=write"]


def test_optuna_search_minimises_validation_nll(tiny_mnist, tmp_path):
    sweep = tmp_path / "search"
    proc = run_script("train.py", tmp_path, "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                      f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}")
    best = (sweep / "optimization_results.yaml").read_text()
    # TINY_RUN fixes optim.lr and model.z_size on the command line; the glimpse sizes are searched.
    assert "best_params" in best and "attention.read_n" in best
    values = [json.loads(path.read_text())["val/nll_best"] for path in sweep.glob("*/metrics.json")]
    assert len(values) == 2
    assert f"best_value: {min(values)}" in best, proc.stdout[-2000:]


def test_slurm_launcher_config_composes():
    cfg = compose_config(["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (1, 1, 1)
