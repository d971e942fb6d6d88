"""The two commands, train and sample: python train.py / python sample.py in a checkout, draw-train /
draw-sample where draw is pip-installed. Each is a Hydra app over conf/ (draw/conf/ in a wheel).

torch and Lightning are imported inside the apps, once Hydra has a config to run: --help, and a command that
Hydra rejects, answer without them. A command Hydra rejects (an unknown group option, a key it cannot parse) exits
with status 2, as every other bad input does; a run that fails once started keeps Hydra's status 1."""
import functools
from typing import Optional

import hydra
from omegaconf import DictConfig

from draw.app import CONF
from draw.errors import exit_on_user_error


def _bad_command_exits_2(app):
    """Hydra ends every error with status 1; before the app has started, the error was the command's."""

    @functools.wraps(app)
    def wrapper():
        started = []
        try:
            app(started)
        except SystemExit as e:
            raise SystemExit(2 if e.code == 1 and not started else e.code) from None

    return wrapper


@_bad_command_exits_2
def train(started: list) -> None:
    @hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
    @exit_on_user_error
    def app(cfg: DictConfig) -> Optional[float]:
        """Returns the best validation NLL (what hparams_search minimises), or the test NLL when nothing trained;
        None for a sweep job that failed."""
        started.append(True)
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from draw.run import objective, sweep_job
        from draw.run import train as train_run

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:  # one job of a sweep: a failure is recorded and the sweep goes on
            return sweep_job(cfg, hydra_cfg.runtime.output_dir, hydra_cfg.overrides.task, hydra_cfg.sweep.dir)
        return objective(train_run(cfg, hydra_cfg.runtime.output_dir, hydra_cfg.overrides.task))

    app()


@_bad_command_exits_2
def sample(started: list) -> None:
    @hydra.main(version_base="1.3", config_path=str(CONF), config_name="sample")
    @exit_on_user_error
    def app(cfg: DictConfig) -> None:
        started.append(True)
        from hydra.core.hydra_config import HydraConfig

        from draw.sample import sample as sample_run

        sample_run(cfg, HydraConfig.get().runtime.output_dir)

    app()
