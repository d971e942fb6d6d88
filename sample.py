"""Draw with a trained DRAW: python sample.py [ckpt_path=PATH] [mode=prior|reconstruct] [boxes=true] [n=64] [T=...]"""
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from draw.errors import exit_on_user_error
from draw.sample import sample


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    sample(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
