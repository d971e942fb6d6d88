"""The two commands, train and sample: python train.py / python sample.py in a checkout, draw-train /
draw-sample where draw is pip-installed. Each is a Hydra app over conf/ (draw/conf/ in a wheel)."""
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from draw.errors import exit_on_user_error
from draw.run import CONF, objective, sweep_job
from draw.run import train as train_run
from draw.sample import sample as sample_run


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
@exit_on_user_error
def train(cfg: DictConfig) -> Optional[float]:
    """Returns the best validation NLL (what hparams_search minimises), or the test NLL when nothing trained;
    None for a sweep job that failed."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:  # one job of a sweep: a failure is recorded and the sweep goes on
        return sweep_job(cfg, hydra_cfg.runtime.output_dir, hydra_cfg.overrides.task, hydra_cfg.sweep.dir)
    return objective(train_run(cfg, hydra_cfg.runtime.output_dir, hydra_cfg.overrides.task))


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="sample")
@exit_on_user_error
def sample(cfg: DictConfig) -> None:
    sample_run(cfg, HydraConfig.get().runtime.output_dir)
