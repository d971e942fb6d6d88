"""Train DRAW: python train.py [attention=none|read|write|read_write] [experiment=...] [key=value ...]"""
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from draw.errors import exit_on_user_error
from draw.run import train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    """Returns the best validation NLL (what hparams_search minimises), or the test NLL when nothing trained."""
    hydra_cfg = HydraConfig.get()
    metrics = train(cfg, hydra_cfg.runtime.output_dir, hydra_cfg.overrides.task)
    return metrics["val/nll_best"] if metrics["val/nll_best"] is not None else metrics["test/nll"]


if __name__ == "__main__":
    main()
