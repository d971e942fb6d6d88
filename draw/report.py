"""Sum up a sweep: summary.md, summary.csv and curves.png in the sweep folder.

Written by a Hydra callback when a multirun ends, or by hand on any sweep folder, finished or not:
    python -m draw.report multirun/DATE/TIME

Or draw the validation curves of runs carried in legs (each run started from the one before it, by init_from=)
on one epoch axis, with reference lines:
    python -m draw.report --legs curves.png "attention=runs/leg1,runs/leg2" "no attention=runs/none" \
        --mark "paper, attention=80.97" --mark "paper, no attention=87.40" --ylim 78 100
"""
import argparse
import csv
import json
import logging
import math
import sys
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from draw.errors import UserError, exit_on_user_error, exit_with_help_if_asked

# TensorBoard's event reader logs every file it opens ("Directory watcher advancing ...") at INFO.
logging.getLogger("tensorboard").setLevel(logging.WARNING)

RUN_COLUMNS = ["params", "epochs", "steps", "wall_time_s", "train_images_per_s", "status", "reason"]
# Generation sweeps compare NLL bounds; classification sweeps (task=classify) compare errors, in %.
COLUMNS = {"val/nll": ["job", "overrides", "test/nll", "test/nll_mc_stderr", "test/iw_nll", "test/lx", "test/lz", "best val/nll",
                       *RUN_COLUMNS],
           "val/error": ["job", "overrides", "test/error", "test/nll", "best val/error", *RUN_COLUMNS]}
TITLES = {
    "val/nll": ["Test NLL bounds in nats per image, best job first. `test/nll` is the negative ELBO, the bound the paper",
                "reports (80.97 with attention, 87.40 without), `test/nll_mc_stderr` its Monte-Carlo standard error (from",
                "its draws of z); `test/iw_nll` is the importance-weighted bound",
                "(Burda et al. 2016; tighter, not in the paper), present when eval.iw_samples > 0."],
    "val/error": ["Test errors in % of the test images, best job first (the paper's Table 1: 4.18 with 4 glimpses,",
                  "3.36 with 8); `test/nll` is the cross-entropy in nats per image."],
}
AXES = {"val/nll": "validation NLL bound (nats per image)", "val/error": "validation error (%)"}


def job_dirs(sweep_dir: Path) -> list:
    return sorted((p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")), key=lambda p: (len(p.name), p.name))


def val_curve(job_dir: Path, metric: str = "val/nll") -> list:
    """(step, epoch, metric) triples from the job's validation.csv (every run writes it, whatever its logger),
    or from its TensorBoard events for runs from before that file; epoch counts from 1, the epoch in which
    that validation ran (at an epoch's end: the epochs trained)."""
    history = job_dir / "validation.csv"
    if history.is_file():
        curve = []
        with open(history, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    curve.append((int(row["step"]), int(row["epoch"]), float(row[metric])))
                except (KeyError, TypeError, ValueError):  # a row cut short by a kill
                    pass
        return curve
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not (job_dir / "tensorboard").is_dir():  # a job that failed before training, or was killed at its start
        return []
    events = EventAccumulator(str(job_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    if "val/nll" not in events.Tags()["scalars"]:
        return []
    epochs = {e.step: int(e.value) + 1 for e in events.Scalars("epoch")} if "epoch" in events.Tags()["scalars"] else {}
    return [(e.step, epochs.get(e.step), e.value) for e in events.Scalars("val/nll")]


def _read(path: Path, load, default):
    """A job's file, or `default` where it is missing or half-written (a job killed while writing it)."""
    try:
        return load(path.read_text()) or default
    except (OSError, ValueError, yaml.YAMLError):
        return default


def job_overrides(job_dir: Path) -> list:
    """What a job is: its overrides, less those that only say where it reads, writes or resumes from (a resumed
    job's ckpt_path=...), the keys its config's override_dirname.exclude_keys leaves out of folder names too."""
    hydra_config = OmegaConf.create(_read(job_dir / ".hydra" / "hydra.yaml", yaml.safe_load, {}))
    where = set(OmegaConf.select(hydra_config, "hydra.job.config.override_dirname.exclude_keys", default=[]))
    return [o for o in _read(job_dir / ".hydra" / "overrides.yaml", yaml.safe_load, []) if str(o).split("=")[0] not in where]


def read_metrics(job_dir: Path) -> dict:
    """A run's metrics.json, or {} where it is missing or half-written."""
    return _read(job_dir / "metrics.json", json.loads, {})


def sweep_monitor(jobs: list) -> str:
    """val/error for a classification sweep, val/nll for generation: what its runs' metrics.json name, or else their config."""
    for job_dir in jobs:
        config = _read(job_dir / ".hydra" / "config.yaml", yaml.safe_load, {})
        monitor = read_metrics(job_dir).get("monitor") or config.get("task", {}).get("monitor")
        if monitor:
            return monitor
    return "val/nll"


def collect(sweep_dir: Path) -> tuple:
    """The sweep's monitor and one row per job, sorted by its test value (unfinished and failed jobs last), with
    its validation curve."""
    jobs = [(d, job_overrides(d)) for d in job_dirs(sweep_dir)]
    monitor = sweep_monitor([d for d, _ in jobs])
    test = monitor.replace("val/", "test/")
    # Label each job by the overrides that differ between jobs: what the sweep compares.
    shared = set.intersection(*(set(o) for _, o in jobs)) if len(jobs) > 1 else set()
    rows = []
    for job_dir, overrides in jobs:
        metrics = read_metrics(job_dir)
        curve = val_curve(job_dir, monitor)
        row = {column: metrics.get(column) for column in COLUMNS[monitor]}
        row.update(
            job=job_dir.name,
            overrides=" ".join(o for o in overrides if o not in shared) or " ".join(overrides) or "(defaults)",
            status=metrics.get("status", "completed" if metrics else "unfinished"),
            curve=curve,
        )
        row[f"best {monitor}"] = min((v for *_, v in curve), default=None)
        rows.append(row)
    return monitor, sorted(rows, key=lambda r: (r[test] is None, r[test] if r[test] is not None else math.inf))


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def write_summary(sweep_dir) -> list:
    sweep_dir = Path(sweep_dir)
    monitor, rows = collect(sweep_dir)
    columns = COLUMNS[monitor]
    if not rows:
        raise SystemExit(f"error: {sweep_dir} holds no Hydra jobs (no */.hydra/overrides.yaml): give a multirun folder")
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# Sweep {sweep_dir}",
        "",
        *TITLES[monitor],
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    plot_curves(rows, sweep_dir / "curves.png", AXES[monitor])
    return rows


def _axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(8, 5))


def _save(fig, ax, path: Path, xlabel: str, ylabel: str) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(rows: list, path: Path, ylabel: str = AXES["val/nll"]) -> None:
    # Against epochs where every job validated once an epoch (runs compare at equal epochs), else against steps.
    by_epoch = all(len({e for _, e, _ in row["curve"]}) == len(row["curve"]) and None not in {e for _, e, _ in row["curve"]}
                   for row in rows)
    fig, ax = _axes()
    for row in rows:
        if row["curve"]:
            steps, epochs, values = zip(*row["curve"])
            ax.plot(epochs if by_epoch else steps, values, marker="o", markersize=3, label=row["overrides"])
    _save(fig, ax, path, "epoch" if by_epoch else "optimizer step", ylabel)


def chained_curves(runs: list) -> list:
    """(run folder, epochs, values) for each run of a chain of legs, its epochs counted on from where the leg before
    it ended, so that the chain reads as one run of as many epochs as its legs together."""
    legs, offset = [], 0
    for run in map(Path, runs):
        curve = [(epoch, value) for _, epoch, value in val_curve(run) if epoch is not None]
        if not curve:
            raise UserError(f"{run} holds no validation history by epoch (validation.csv): give a run folder of train.py")
        epochs, values = zip(*curve)
        legs.append((run, [offset + e for e in epochs], list(values)))
        offset += max(epochs)
    return legs


def plot_legs(series: dict, path: Path, marks: dict, ylim: tuple = None) -> None:
    """`series`: a label for each chain and its run folders in order; `marks`: horizontal reference lines by label;
    `ylim`: the value axis' (bottom, top), where the first epochs would squeeze the long tail flat."""
    fig, ax = _axes()
    for colour, (label, runs) in enumerate(series.items()):
        legs = chained_curves(runs)
        names = legs[0][0].name if len(legs) == 1 else f"{legs[0][0].name} to {legs[-1][0].name}"
        for leg, (_, epochs, values) in enumerate(legs):
            # one colour a chain; each leg its own line, so that the restarts between them show as steps
            ax.plot(epochs, values, marker="o", markersize=3, color=f"C{colour}",
                    label=f"{label}: {names}" if leg == 0 else None)
    for label, value in marks.items():
        ax.axhline(value, linestyle=":", color="grey")
        ax.annotate(f"{label}: {value:g}", (0.01, value), xycoords=("axes fraction", "data"), xytext=(0, 3),
                    textcoords="offset points", fontsize=8, color="grey")
    ax.set_ylim(ylim)
    _save(fig, ax, path, "epoch (of the chain)", AXES["val/nll"])


def _labelled(spec: str) -> tuple:
    label, sep, value = spec.rpartition("=")
    if not sep or not label or not value:
        raise UserError(f"{spec!r} is not LABEL=VALUE (as \"attention=runs/leg1,runs/leg2\" or \"paper=80.97\")")
    return label, value


@exit_on_user_error
def legs_main(argv: list) -> None:
    parser = argparse.ArgumentParser(prog="python -m draw.report --legs", description="validation curves of chains of legs")
    parser.add_argument("out", help="the picture to write (.png)")
    parser.add_argument("series", nargs="+", metavar="LABEL=RUN[,RUN...]", help="a chain's label and its run folders in order")
    parser.add_argument("--mark", action="append", default=[], metavar="LABEL=VALUE", help="a horizontal reference line")
    parser.add_argument("--ylim", type=float, nargs=2, metavar=("BOTTOM", "TOP"), help="the value axis' range")
    args = parser.parse_args(argv)
    series = {label: runs.split(",") for label, runs in map(_labelled, args.series)}
    marks = {}
    for label, value in map(_labelled, args.mark):
        try:
            marks[label] = float(value)
        except ValueError:
            raise UserError(f"--mark {label}={value}: the value must be a number, as --mark \"paper=80.97\"") from None
    plot_legs(series, Path(args.out), marks, args.ylim)
    print(f"wrote {args.out}")


class SweepSummary(Callback):
    """Hydra callback: sum the sweep up when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        rows = write_summary(config.hydra.sweep.dir)
        print(f"sweep summary ({len(rows)} jobs): {Path(config.hydra.sweep.dir) / 'summary.md'}")
        failed = [row for row in rows if row["status"] == "failed"]
        if failed:  # the sweep ran every job, but a script must not read it as a success
            print(f"error: {len(failed)} of {len(rows)} jobs failed: " + "; ".join(f"{r['overrides']} ({r['reason']})" for r in failed)
                  + " (their folders and reasons: summary.md)", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    exit_with_help_if_asked(sys.argv[1:], __doc__)
    if sys.argv[1:2] == ["--legs"]:
        legs_main(sys.argv[2:])
        sys.exit(0)
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m draw.report SWEEP_DIR")
    write_summary(sys.argv[1])
    print(f"wrote summary.md, summary.csv and curves.png in {sys.argv[1]}")
