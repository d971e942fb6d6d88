"""Training and evaluation from a composed Hydra config: what train.py runs, importable so tests can call it."""
import json
import logging
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import hydra
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from draw.app import CONF, checkpoint_path, command_line
from draw.callbacks import (
    AtomicCheckpointIO,
    LastCheckpoint,
    ProgressBar,
    RandomStates,
    ReportCompilation,
    SaveOnInterrupt,
    TrainThroughput,
    ValidationHistory,
)
from draw.classifier_module import ClassifierModule
from draw.config import check_same_settings, check_same_task, configured_loggers, load_weights, read_checkpoint, validate_train_config
from draw.errors import UserError
from draw.module import DRAWModule, train_only
from draw.report import read_metrics

# The project's own lines (output folder, resume command, results): on the terminal and, through Hydra's
# file handler (conf/hydra/job_logging/draw.yaml), in the run folder's train.log.
log = logging.getLogger("draw")


def _not_an_advert(record: logging.LogRecord) -> bool:
    return "litlogger" not in record.getMessage()


def silence_what_is_not_the_users_business() -> None:
    """Lines every run would print that say nothing about this run: Lightning's advert for its cloud logger
    and a deprecation inside Lightning's own code. Calling it again adds nothing."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_not_an_advert)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def compose_config(overrides: Sequence[str] = (), config_name: str = "config", **kwargs) -> DictConfig:
    """The config train.py (or, with config_name="sample", sample.py) would run, without running it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), **kwargs)


# Each task's LightningModule (conf/task/).
MODULES = {"generate": DRAWModule, "classify": ClassifierModule}


def model_hparams(cfg: DictConfig) -> dict:
    """The model's plain hyper-parameters: for DRAW, DRAWConfig's fields from the `model` and `attention` groups;
    for a classifier, the `model` group's."""
    groups = [cfg.model] + ([cfg.attention] if cfg.task.name == "generate" else [])
    return {k: v for group in groups for k, v in OmegaConf.to_container(group, resolve=True).items()}


def build_module(cfg: DictConfig):
    plain = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    settings = dict(model=model_hparams(cfg), optim=plain(cfg.optim), scheduler=plain(cfg.scheduler))
    if cfg.task.name == "generate":
        settings.update(kl_warmup_steps=cfg.kl_warmup_steps, kl_weight=cfg.kl_weight)
    return MODULES[cfg.task.name](**settings)


def describe(module) -> str:
    """One line on the model: what it is, its parameters and its sizes."""
    params = f"{sum(p.numel() for p in module.parameters()):,} parameters"
    m = module.model.cfg
    if isinstance(module, DRAWModule):
        windows = lambda on, n: f"{n}x{n}" if on else "none"  # noqa: E731
        return (f"model: DRAW, {params} (T={m.T}, z {m.z_size}, LSTMs {m.enc_size}/{m.dec_size}, "
                f"read {windows(m.read_attention, m.read_n)}, write {windows(m.write_attention, m.write_n)}"
                f"{', learned prior' if m.learned_prior else ''}{f' with {m.prior_hidden} hidden units' if m.prior_hidden else ''})")
    if module.hparams.model["architecture"] == "glimpse":
        return f"model: glimpse classifier, {params} ({m.glimpses} glimpses of {m.read_n}x{m.read_n}, LSTM {m.hidden_size})"
    return f"model: convolutional classifier, {params} (channels {list(m.channels)}, kernel {m.kernel})"


def result_line(cfg: DictConfig, metrics: dict) -> str:
    if cfg.task.name == "classify":
        return f"test error: {metrics['test/error']:.2f} % (cross-entropy {metrics['test/nll']:.4f} nats)"
    line = (f"test NLL bound: {metrics['test/nll']:.2f} ± {metrics['test/nll_mc_stderr']:.2f} nats per image (Monte-Carlo "
            f"standard error; Lx {metrics['test/lx']:.2f} + Lz {metrics['test/lz']:.2f})")
    if cfg.eval.iw_samples:
        line += f"; importance-weighted bound, K={cfg.eval.iw_samples}: {metrics['test/iw_nll']:.2f}"
    return line


def prepare_device(cfg: DictConfig) -> None:
    """What must be set before the first CUDA call: fp32 matmuls' precision and, with trainer.deterministic=true,
    cuBLAS's fixed workspace (without it torch's deterministic mode refuses cuBLAS matmuls on a GPU)."""
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    if cfg.trainer.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def build_loggers(cfg: DictConfig, out: Path) -> list:
    """The `logger` group's loggers (none, one or several), each writing under the run folder (in its `folder`
    there when the config names one; `requires`, the package it needs, is checked by validate_train_config).
    `sqlite_file` (MLflow's) puts its store in that SQLite file in the folder, and its artifacts beside it, unless
    `tracking_uri` names a store: MLflow 3 refuses a plain file store."""
    loggers = []
    for logger in configured_loggers(cfg).values():
        settings = dict(logger)
        settings.pop("requires", None)
        folder = out / settings.pop("folder", "")
        database = settings.pop("sqlite_file", None)
        if database and not settings.get("tracking_uri"):
            folder.mkdir(parents=True, exist_ok=True)
            settings.update(tracking_uri=f"sqlite:///{(folder / database).resolve()}",
                            artifact_location=(folder / "artifacts").resolve().as_uri())
        loggers.append(hydra.utils.instantiate(settings, save_dir=str(folder)))
    return loggers


def build_callbacks(cfg: DictConfig, out: Path) -> list:
    """The `callbacks` group's callbacks, a `dirpath` in their config being a folder inside the run folder; then
    what every run has: its validation history (validation.csv, read by draw.report), its random streams in each
    checkpoint (so that a resumed run goes on drawing as the uninterrupted one), a word on compilation with
    compile=true, and one progress bar."""
    callbacks = [hydra.utils.instantiate(node, **({"dirpath": str(out / node.dirpath)} if "dirpath" in node else {}))
                 for node in (cfg.get("callbacks") or {}).values()]
    callbacks += [ValidationHistory(out / "validation.csv"), RandomStates()]
    if cfg.compile:
        callbacks.append(ReportCompilation())
    if cfg.trainer.enable_progress_bar:
        callbacks.append(ProgressBar())  # Lightning would pick Rich's where rich is installed: one bar everywhere
    return callbacks


def train(cfg: DictConfig, output_dir: str, overrides: Sequence[str] = (), resume_command: Optional[str] = None) -> dict:
    """Fit on train/val (unless train=false), then evaluate the best checkpoint (by task.monitor) on the test
    set. Everything written goes under output_dir; metrics.json sums the run up."""
    started = time.perf_counter()
    silence_what_is_not_the_users_business()
    validate_train_config(cfg)
    prepare_device(cfg)
    ckpt_path = checkpoint_path(cfg.ckpt_path, "ckpt_path", cfg.paths.output_dir)
    ckpt_path = ckpt_path and str(ckpt_path)
    if ckpt_path:
        checkpoint = read_checkpoint(ckpt_path)
        if cfg.train:
            check_same_settings(checkpoint, cfg, ckpt_path)
            # a resumed run's checkpoints/ holds the run's own checkpoints: nothing to warn of
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    elif not cfg.train:
        raise UserError("train=false evaluates a checkpoint: give it as ckpt_path=PATH")
    start = None  # init_from's checkpoint: a new run's first weights (a resumed run's checkpoint holds their successors)
    if cfg.get("init_from"):
        if not cfg.train:
            raise UserError("init_from starts a training run: to evaluate a checkpoint with train=false, give it as ckpt_path=PATH")
        if not ckpt_path:
            start = read_checkpoint(checkpoint_path(cfg.init_from, "init_from"), key="init_from")
            check_same_task(start, cfg, cfg.init_from, key="init_from")
    out = Path(output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()  # a missing data set stops the run here, before any other work
    monitor = cfg.task.monitor
    # Resuming in the same folder keeps one TensorBoard history and one checkpoints/ folder.
    resume_command = resume_command or command_line("train", [
        *(o for o in overrides if not o.startswith(("ckpt_path=", "hydra.run.dir="))),
        f"hydra.run.dir={out}", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"])
    callbacks = build_callbacks(cfg, out)
    best = next((c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor == monitor), None)
    throughput = next((c for c in callbacks if isinstance(c, TrainThroughput)), None)
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        default_root_dir=str(out),
        logger=build_loggers(cfg, out) or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )
    if trainer.world_size == 1:  # the data module carries the place in the epoch (ResumableBatches), not the loader
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    if cfg.train:
        module = build_module(cfg)
        if start is not None:
            load_weights(module, start, cfg.init_from)
            log.info(f"weights from {cfg.init_from} (epoch {start.get('epoch', 0) + 1} of its run); a fresh optimizer and schedule")
    else:
        module = MODULES[cfg.task.name].load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    if trainer.is_global_zero:
        log.info(describe(module))
    if cfg.train and cfg.train_only:
        trained = train_only(module, list(cfg.train_only))
        log.info(f"training only {', '.join(cfg.train_only)}: {trained:,} parameters, the rest frozen")
    if cfg.compile:
        module.model.compile_steps(cfg.compile_steps_per_call)
    module.max_nonfinite_steps = cfg.max_nonfinite_steps
    evaluated = None  # None: test the weights as they are
    if cfg.train:
        if trainer.is_global_zero:
            resumable = any(isinstance(c, LastCheckpoint) for c in callbacks) and not trainer.fast_dev_run  # fdr saves none
            log.info(f"outputs: {out}" + (f"\nif this run dies, resume it with: {resume_command}" if resumable else ""))
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except (SIGTERMException, SystemExit) as stopped:  # SIGTERM, or Ctrl-C (after which Lightning exits)
            if trainer.is_global_zero and any(isinstance(c, SaveOnInterrupt) for c in callbacks):
                log.info(f"resume with: {resume_command}")
            # Lightning ends a SIGTERM-ed fit with exit status 0; a scheduler must not read it as done.
            raise SystemExit(128 + signal.SIGTERM if isinstance(stopped, SIGTERMException) else stopped.code) from None
        evaluated = (best.best_model_path or None) if best else None  # none when no validation ran, or callbacks=none
    if cfg.task.name == "generate":
        module.iw_samples = cfg.eval.iw_samples
    # The test pass draws from its own stream: one checkpoint, one bound, whatever ran before it.
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        torch.manual_seed(cfg.eval.seed)
        results = trainer.test(module, datamodule=datamodule, ckpt_path=evaluated)
    metrics = {
        **{k: float(v) for k, v in results[0].items()},
        "monitor": monitor,
        f"{monitor}_best": float(best.best_model_score) if best and best.best_model_score is not None else None,
        "skipped_steps": module.skipped_steps,
        "iw_samples": cfg.eval.iw_samples,
        "params": sum(p.numel() for p in module.parameters()),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "wall_time_s": time.perf_counter() - started,
        "train_images_per_s": throughput.images_per_s if throughput and throughput.images else None,
        "checkpoint": str(evaluated or ckpt_path or ""),
        "overrides": list(overrides),
        "status": "completed",
    }
    if trainer.is_global_zero:
        write_metrics(out, metrics)
        log.info(result_line(cfg, metrics))
        log.info(f"outputs: {out}")
    return metrics


def objective(metrics: dict) -> float:
    """What a sweeper minimises: the best value of the run's monitor (validation NLL, or error for classification),
    or its test value when nothing was validated."""
    monitor = metrics.get("monitor", "val/nll")
    best = metrics.get(f"{monitor}_best")
    return best if best is not None else metrics[monitor.replace("val/", "test/")]


def sweep_job(cfg: DictConfig, output_dir: str, overrides: Sequence[str], sweep_dir: str) -> Optional[float]:
    """One job of a multirun. A job completed in an earlier run of the sweep (same folder: the folder is named
    by the job's overrides) is skipped; one that was stopped resumes from its last.ckpt. A job that fails writes
    metrics.json with status "failed" and its reason and returns None (Optuna then records the trial as failed;
    NaN would crash its sweeper), so the sweep goes on; a signal (Ctrl-C, SIGTERM) writes status "stopped" and stops the sweep."""
    out = Path(output_dir)
    earlier = read_metrics(out)
    if earlier.get("status") == "completed":
        log.info(f"{out.name}: completed in an earlier run of this sweep, skipped")
        return objective(earlier)
    last = out / "checkpoints" / "last.ckpt"
    if cfg.train and cfg.ckpt_path is None and last.is_file():
        log.info(f"{out.name}: resuming from {last}")
        cfg.ckpt_path = str(last)
    argv = _sweep_arguments(Path(sweep_dir)) or list(overrides)
    resume_command = command_line("train", ["-m", *argv, f"hydra.sweep.dir={sweep_dir}"])
    try:
        return objective(train(cfg, output_dir, overrides, resume_command))
    except (KeyboardInterrupt, SystemExit) as e:
        reason = f"stopped by a signal; resume with: {resume_command}"
        write_metrics(out, {"status": "stopped", "reason": reason, "overrides": list(overrides)})
        raise e
    except Exception as e:  # noqa: BLE001 -- any failure of one job is recorded, and the sweep goes on
        reason = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, UserError):
            log.exception(f"{out.name} failed")  # with its traceback, on the terminal and in the job's train.log
        log.error(f"error: {out.name}: {reason}")
        write_metrics(out, {"status": "failed", "reason": reason, "overrides": list(overrides)})
        return None


def _sweep_arguments(sweep_dir: Path) -> list:
    """The overrides the sweep was started with (its comma-separated lists), from Hydra's multirun.yaml."""
    try:
        saved = OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task
    except Exception:  # noqa: BLE001 -- not written by every sweeper; the job's own overrides then stand in
        return []
    return [o for o in saved if not o.startswith("hydra.sweep.dir=")]


def write_metrics(out: Path, metrics: dict) -> None:
    """The run's metrics.json: its results, or for a sweep job that did not complete, its status and reason."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
