"""Sweeps that survive: a failed job never ends the sweep, a killed sweep resumes, a search outlives a kill."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TINY_RUN, job_folder, run_script
from draw.report import chained_curves, write_summary

TINY_SWEEP = [o for o in TINY_RUN if not o.startswith("model.T=")]


def test_a_failed_job_is_recorded_and_the_others_run(tiny_mnist, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script("train.py", tmp_path, "-m", "model.T=2,0,3", f"data.data_dir={tiny_mnist}", *TINY_SWEEP,
                      "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}", check=False)
    statuses = {T: json.loads((job_folder(sweep, f"model.T={T}") / "metrics.json").read_text()) for T in (2, 0, 3)}
    assert statuses[2]["status"] == statuses[3]["status"] == "completed"
    assert statuses[0]["status"] == "failed" and "model.T=0 is not allowed" in statuses[0]["reason"]
    # The sweep ran to its summary, then said which job failed and exited non-zero.
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 3 jobs failed: model.T=0 (model.T=0 is not allowed"), last
    assert [r["status"] for r in write_summary(sweep)] == ["completed", "completed", "failed"]


@pytest.mark.slow
def test_a_sweep_over_init_from_gives_each_start_its_own_folder(trained_run, tiny_mnist, tmp_path):
    """Folders are named by overrides: two starting checkpoints are two jobs, not one folder written twice (which a
    rerun would then take as finished), and a path's slashes do not nest folders."""
    from draw.export import export

    _, run, _ = trained_run
    starts = [run / "checkpoints" / "last.ckpt", tmp_path / "exported.ckpt"]
    export(*starts)
    sweep = tmp_path / "sweep"
    run_script("train.py", tmp_path, "-m", f"init_from={starts[0]},{starts[1]}", f"data.data_dir={tiny_mnist}", *TINY_RUN,
               "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}")
    rows = write_summary(sweep)
    assert len(rows) == 2 and [r["status"] for r in rows] == ["completed", "completed"]
    assert {r["overrides"] for r in rows} == {f"init_from={start}" for start in starts}
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2 and sorted(p.parent for p in sweep.glob("*/metrics.json")) == jobs  # side by side, each finished


def test_killed_sweep_reruns_into_the_same_folder(tiny_mnist, tmp_path):
    sweep = tmp_path / "sweep"
    command = [sys.executable, str(ROOT / "train.py"), "-m", "attention=none,write", f"data.data_dir={tiny_mnist}",
               *TINY_SWEEP, "model.T=3", "trainer.max_epochs=10", "checkpoint_every_n_steps=5", "trainer.deterministic=true",
               f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list(sweep.glob("attention=write*/checkpoints/last.ckpt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep, mid-job, as a pre-empted node would
    proc.wait()
    first = job_folder(sweep, "attention=none")
    finished_before = json.loads((first / "metrics.json").read_text())
    assert not (job_folder(sweep, "attention=write") / "metrics.json").exists(), "the second job finished before the kill"

    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "completed in an earlier run of this sweep, skipped" in rerun.stdout
    # The line a sweep job prints is the sweep's own command, into the same folder.
    assert f"resume it with: python train.py -m attention=none,write data.data_dir={tiny_mnist}" in rerun.stdout
    assert f"hydra.sweep.dir={sweep}\n" in rerun.stdout
    assert json.loads((first / "metrics.json").read_text()) == finished_before  # not run again
    resumed = json.loads((job_folder(sweep, "attention=write") / "metrics.json").read_text())
    assert (resumed["status"], resumed["epochs"], resumed["steps"]) == ("completed", 10, 100)  # as if never killed
    alone = tmp_path / "alone"  # the killed job's settings in a run never killed: the same numbers, to the bit
    run_script("train.py", tmp_path, "attention=write", *command[4:-1], f"hydra.run.dir={alone}")
    uninterrupted = json.loads((alone / "metrics.json").read_text())
    assert (resumed["test/nll"], resumed["val/nll_best"]) == (uninterrupted["test/nll"], uninterrupted["val/nll_best"])
    rows = write_summary(sweep)
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)


@pytest.mark.slow
def test_optuna_study_in_sqlite_survives_a_kill(tiny_mnist, tmp_path):
    storage = f"sqlite:///{tmp_path}/search.db"
    command = [sys.executable, str(ROOT / "train.py"), "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
               f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=draw", f"data.data_dir={tiny_mnist}",
               *TINY_RUN, "trainer.max_epochs=10", "checkpoint_every_n_steps=5"]
    first = subprocess.Popen([*command, f"hydra.sweep.dir={tmp_path}/search1"], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    # Killed during the second trial: one trial done, one running.
    while len(list((tmp_path / "search1").glob("*/checkpoints/last.ckpt"))) < 2 and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    run_script("train.py", tmp_path, *command[2:], f"hydra.sweep.dir={tmp_path}/search2")
    import optuna

    states = [t.state for t in optuna.load_study(study_name="draw", storage=storage).trials]
    # The study went on: the first run's finished trial and the rerun's two; the killed one stays "running".
    assert len(states) == 4 and states.count(optuna.trial.TrialState.COMPLETE) == 3, states


def test_optuna_records_a_failed_trial_and_goes_on(tiny_mnist, tmp_path):
    storage = f"sqlite:///{tmp_path}/search.db"
    # Every trial fails (T=0); the search records each as failed rather than crashing on the first.
    proc = run_script("train.py", tmp_path, "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                      f"hydra.sweeper.storage={storage}", f"data.data_dir={tiny_mnist}", *TINY_SWEEP, "model.T=0",
                      "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}/search", check=False)
    import optuna

    study = optuna.load_study(study_name="draw", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2, proc.stderr[-2000:]


def test_report_survives_empty_half_written_and_failed_job_folders(tiny_mnist, tmp_path):
    sweep = tmp_path / "sweep"
    run_script("train.py", tmp_path, "-m", "attention=none", f"data.data_dir={tiny_mnist}", *TINY_RUN,
               "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}")
    for name, metrics in (("empty", None), ("half", '{"test/nll": 1'), ("failed", '{"status": "failed", "reason": "boom"}')):
        (sweep / name / ".hydra").mkdir(parents=True)
        (sweep / name / ".hydra" / "overrides.yaml").write_text("- model.T: [" if name == "half" else f"- job={name}\n")
        if metrics:
            (sweep / name / "metrics.json").write_text(metrics)
    (sweep / "half" / "tensorboard").mkdir()  # a logger folder with no events yet
    rows = {r["job"]: r for r in write_summary(sweep)}
    assert rows["empty"]["status"] == rows["half"]["status"] == "unfinished"
    assert (rows["failed"]["status"], rows["failed"]["reason"]) == ("failed", "boom")
    assert "| failed |" in (sweep / "summary.md").read_text()


def test_report_labels_jobs_by_what_they_are_not_where_they_resumed_from(tmp_path):
    sweep = tmp_path / "sweep"
    for name, overrides in (("a", ["attention=none", "optim.lr=1e-3", "ckpt_path=/runs/a/last.ckpt"]),
                            ("b", ["attention=read", "optim.lr=1e-3", "data.data_dir=/data"])):
        (sweep / name / ".hydra").mkdir(parents=True)
        (sweep / name / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        # what Hydra writes beside them, from conf/config.yaml
        (sweep / name / ".hydra" / "hydra.yaml").write_text(
            "hydra:\n  job:\n    config:\n      override_dirname:\n        exclude_keys: [data.data_dir, ckpt_path]\n")
        (sweep / name / "metrics.json").write_text('{"test/nll": 90.0, "status": "completed"}')
    rows = {r["job"]: r["overrides"] for r in write_summary(sweep)}
    assert rows == {"a": "attention=none", "b": "attention=read"}


def test_a_chain_of_legs_is_one_colour_and_one_legend_entry(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    import draw.report as report

    for name in ("leg1", "leg2", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "validation.csv").write_text("epoch,step,val/nll\n1,10,95.0\n2,20,93.0\n")
    drawn = []
    monkeypatch.setattr(report, "_save", lambda fig, ax, *args: drawn.append(ax))
    report.plot_legs({"attention": [tmp_path / "leg1", tmp_path / "leg2"], "none": [tmp_path / "other"]},
                     tmp_path / "chain.png", marks={})
    lines = drawn[0].get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[1, 2], [3, 4], [1, 2]]  # each leg its own line
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert drawn[0].get_legend_handles_labels()[1] == ["attention: leg1 to leg2", "none: other"]
    plt.close(drawn[0].figure)  # what the stubbed-out _save would have done


def test_legs_carry_on_each_others_epochs_in_one_picture(tmp_path):
    for name, values in (("leg1", [100.0, 95.0, 93.0]), ("leg2", [94.0, 91.0])):
        (tmp_path / name).mkdir()
        rows = "".join(f"{epoch},{epoch * 10},{value}\n" for epoch, value in enumerate(values, 1))
        (tmp_path / name / "validation.csv").write_text("epoch,step,val/nll\n" + rows)
    legs = chained_curves([tmp_path / "leg1", tmp_path / "leg2"])
    assert [(run.name, epochs, values) for run, epochs, values in legs] == [
        ("leg1", [1, 2, 3], [100.0, 95.0, 93.0]), ("leg2", [4, 5], [94.0, 91.0])]

    def report(*args):
        return subprocess.run([sys.executable, "-m", "draw.report", "--legs", str(tmp_path / "chain.png"), *args],
                              capture_output=True, text=True, cwd=tmp_path)

    proc = report("attention=leg1,leg2", "none=leg2", "--mark", "paper=80.97", "--ylim", "78", "100")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "chain.png").read_bytes()[:4] == b"\x89PNG"
    for args, says in ((["attention=leg1,gone"], "gone holds no validation history"), (["leg1"], "is not LABEL=VALUE"),
                       (["a=leg1", "--mark", "paper=high"], "the value must be a number")):
        proc = report(*args)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and says in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
