"""Train DRAW: python train.py [attention=none|read|write|read_write] [experiment=...] [key=value ...]"""
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from draw.errors import UserError
from draw.run import train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        return train(cfg, HydraConfig.get().runtime.output_dir)["test/nll"]
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
