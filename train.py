"""Train DRAW: python train.py [attention=none|read|write|read_write] [experiment=...] [key=value ...]"""
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from draw.errors import exit_on_user_error
from draw.run import objective, sweep_job, train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@exit_on_user_error
def main(cfg: DictConfig) -> Optional[float]:
    """Returns the best validation NLL (what hparams_search minimises), or the test NLL when nothing trained;
    None for a sweep job that failed."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:  # one job of a sweep: a failure is recorded and the sweep goes on
        return sweep_job(cfg, hydra_cfg.runtime.output_dir, hydra_cfg.overrides.task, hydra_cfg.sweep.dir)
    return objective(train(cfg, hydra_cfg.runtime.output_dir, hydra_cfg.overrides.task))


if __name__ == "__main__":
    main()
