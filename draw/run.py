"""Training and evaluation from a composed Hydra config: what train.py runs, importable so tests can call it."""
import json
import time
from pathlib import Path
from typing import Sequence

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from draw.callbacks import DrawingImages, TrainThroughput
from draw.errors import UserError
from draw.module import DRAWModule


def model_hparams(cfg: DictConfig) -> dict:
    """DRAWConfig's fields from the `model` and `attention` groups, as plain Python types."""
    return {**OmegaConf.to_container(cfg.model, resolve=True), **OmegaConf.to_container(cfg.attention, resolve=True)}


def build_module(cfg: DictConfig) -> DRAWModule:
    return DRAWModule(model=model_hparams(cfg), optim=OmegaConf.to_container(cfg.optim, resolve=True))


def train(cfg: DictConfig, output_dir: str, overrides: Sequence[str] = ()) -> dict:
    """Fit on train/val (unless train=false), then evaluate the best checkpoint on the test set (fixed
    binarization). Everything written goes under output_dir; metrics.json sums the run up."""
    started = time.perf_counter()
    out = Path(output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    checkpoints = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="epoch{epoch:03d}-val_nll{val/nll:.2f}",
        auto_insert_metric_name=False,
        monitor="val/nll",
        mode="min",
        save_last=True,
    )
    throughput = TrainThroughput()
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        default_root_dir=str(out),
        logger=TensorBoardLogger(str(out), name="tensorboard", version=""),
        callbacks=[checkpoints, throughput, DrawingImages()],
    )
    if cfg.train:
        module = build_module(cfg)
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        evaluated = checkpoints.best_model_path or None  # None: the weights as they are (no validation ran)
    elif cfg.ckpt_path:
        module = DRAWModule.load_from_checkpoint(cfg.ckpt_path, map_location="cpu", weights_only=True)
        evaluated = None
    else:
        raise UserError("train=false evaluates a checkpoint: give it as ckpt_path=PATH")
    module.iw_samples = cfg.eval.iw_samples
    results = trainer.test(module, datamodule=datamodule, ckpt_path=evaluated)
    metrics = {
        **{k: float(v) for k, v in results[0].items()},
        "iw_samples": cfg.eval.iw_samples,
        "params": sum(p.numel() for p in module.parameters()),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "wall_time_s": time.perf_counter() - started,
        "train_images_per_s": throughput.images_per_s if throughput.images else None,
        "checkpoint": str(evaluated or cfg.ckpt_path or ""),
        "overrides": list(overrides),
    }
    if trainer.is_global_zero:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        line = f"test NLL bound: {metrics['test/nll']:.2f} nats per image (Lx {metrics['test/lx']:.2f} + Lz {metrics['test/lz']:.2f})"
        if cfg.eval.iw_samples:
            line += f"; importance-weighted bound, K={cfg.eval.iw_samples}: {metrics['test/iw_nll']:.2f}"
        print(line)
        print(f"outputs: {out}")
    return metrics
