"""Training from a composed Hydra config: what train.py runs, importable so tests can call it in-process."""
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from draw.callbacks import DrawingImages
from draw.module import DRAWModule


def model_hparams(cfg: DictConfig) -> dict:
    """DRAWConfig's fields from the `model` and `attention` groups, as plain Python types."""
    return {**OmegaConf.to_container(cfg.model, resolve=True), **OmegaConf.to_container(cfg.attention, resolve=True)}


def build_module(cfg: DictConfig) -> DRAWModule:
    return DRAWModule(model=model_hparams(cfg), optim=OmegaConf.to_container(cfg.optim, resolve=True))


def train(cfg: DictConfig, output_dir: str) -> dict:
    """Fit on train/val, test the best checkpoint; everything written goes under output_dir. Returns test metrics."""
    out = Path(output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = build_module(cfg)
    checkpoints = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="epoch{epoch:03d}-val_nll{val/nll:.2f}",
        auto_insert_metric_name=False,
        monitor="val/nll",
        mode="min",
        save_last=True,
    )
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        default_root_dir=str(out),
        logger=TensorBoardLogger(str(out), name="tensorboard", version=""),
        callbacks=[checkpoints, DrawingImages()],
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    results = trainer.test(module, datamodule=datamodule, ckpt_path="best" if checkpoints.best_model_path else None)
    metrics = {k: float(v) for k, v in results[0].items()}
    print(f"test NLL bound: {metrics['test/nll']:.2f} nats per image (Lx {metrics['test/lx']:.2f} + Lz {metrics['test/lz']:.2f})")
    print(f"outputs: {out}")
    return metrics
