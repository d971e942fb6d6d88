"""Checks of a composed config and of checkpoints, before any work starts: each problem is one UserError
line naming the key, the value and what is allowed."""
import importlib.util
import tempfile
from pathlib import Path
from typing import Optional

import hydra
import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from draw.classifier import ARCHITECTURES, classifier_defaults
from draw.data import check_binarization
from draw.data.mnist import MNIST_SIZE
from draw.errors import UserError, exit_with
from draw.model import DRAWConfig

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
SCHEDULES = ("none", "cosine", "onecycle", "plateau")
MATMUL_PRECISIONS = ("highest", "high", "medium")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise UserError(f"{key}={value!r} is not allowed: {allowed}")


def require_int(key: str, value, low: int, high: Optional[int] = None) -> None:
    ok = _is_int(value) and value >= low and (high is None or value <= high)
    require(ok, key, value, f"an integer >= {low}" + (f" and <= {high}" if high is not None else ""))


def check_cuda(key: str, value: str) -> None:
    """A GPU asked for (gpu, cuda, cuda:N) must be there."""
    if str(value).startswith(("gpu", "cuda")) and not torch.cuda.is_available():
        raise UserError(f"{key}={value!r}: no CUDA device is visible here; use {key}=cpu")


def check_accelerator(key: str, value: str) -> None:
    require(value in ACCELERATORS, key, value, f"one of {', '.join(ACCELERATORS)}")
    check_cuda(key, value)


# Each task and the data modules it can learn from (conf/task/, conf/data/).
TASK_DATA = {"generate": ("draw.data.MNISTDataModule", "draw.data.TwoDigitMNISTDataModule", "draw.data.SVHNDataModule",
                          "draw.data.CIFAR10DataModule"),
             "classify": ("draw.data.ClutteredMNISTDataModule",)}


def check_window_init(key: str, init) -> None:
    for name, value in init.items():
        require(name in ("stride", "var", "gamma"), f"{key}.{name}", value, "the keys are stride, var and gamma")
        require(value is None or (_is_number(value) and value > 0), f"{key}.{name}", value, "null or a number > 0")


def check_known_keys(cfg: DictConfig, group: str, known) -> None:
    """A key added to a model group (+model.TT=4) that the model has no setting for: one line naming those it has."""
    for key, value in cfg[group].items():
        require(key in known, f"{group}.{key}", value, f"{group}'s keys are {', '.join(k for k in cfg[group] if k in known)}")


def check_draw_config(cfg: DictConfig) -> None:
    m, a, d = cfg.model, cfg.attention, cfg.data
    for group in ("model", "attention"):
        check_known_keys(cfg, group, DRAWConfig.__dataclass_fields__)
    for key in ("T", "z_size", "enc_size", "dec_size"):
        require_int(f"model.{key}", m[key], 1)
    require_int("model.prior_hidden", m.prior_hidden, 0)
    require(m.learned_prior or not m.prior_hidden, "model.prior_hidden", m.prior_hidden, "0 without model.learned_prior=true")
    for key in ("channels", "height", "width"):
        require_int(f"data.{key}", d[key], 1)
        require(m[key] == d[key], f"model.{key}", m[key], f"data.{key} ({d[key]}), the images' own")
    hydra.utils.get_class(d._target_).check_shape(d.channels, d.height, d.width)
    for key in ("read_n", "write_n"):
        require_int(f"attention.{key}", a[key], 1, min(m.height, m.width))
    for window in ("read_init", "write_init"):
        check_window_init(f"attention.{window}", a[window])
    for key in ("binarization", "eval_binarization"):  # here too: Hydra's instantiate would wrap the DataModule's error
        check_binarization(d[key], f"data.{key}")
    require_int("kl_warmup_steps", cfg.kl_warmup_steps, 0)
    require(_is_number(cfg.kl_weight) and cfg.kl_weight > 0, "kl_weight", cfg.kl_weight, "a number > 0 (1: the ELBO)")
    require_int("eval.iw_samples", cfg.eval.iw_samples, 0)
    require_int("eval.seed", cfg.eval.seed, 0)
    require_int("compile_steps_per_call", cfg.compile_steps_per_call, 1)


def check_classifier_config(cfg: DictConfig) -> None:
    m, d = cfg.model, cfg.data
    require(m.get("architecture") in ARCHITECTURES, "model", m.get("architecture"),
            f"a classifier with task=classify: model={' or model='.join(ARCHITECTURES)}")
    check_known_keys(cfg, "model", classifier_defaults(m.architecture))
    require_int("data.size", d.size, MNIST_SIZE)
    require_int("data.distractors", d.distractors, 0)
    require_int("data.distractor_size", d.distractor_size, 1, MNIST_SIZE)
    require_int("data.seed", d.seed, 0)
    for key in ("height", "width"):
        require(m[key] == d.size, f"model.{key}", m[key], f"data.size ({d.size}), the size of the images")
    require_int("model.classes", m.classes, 2)
    if m.architecture == "glimpse":
        require_int("model.glimpses", m.glimpses, 1)
        require_int("model.read_n", m.read_n, 1, min(m.height, m.width))
        require_int("model.hidden_size", m.hidden_size, 1)
        check_window_init("model.read_init", m.read_init)
    else:
        channels = list(m.channels) if OmegaConf.is_list(m.channels) else m.channels
        require(isinstance(channels, list) and channels and all(_is_int(c) and c >= 1 for c in channels),
                "model.channels", channels, "a list of integers >= 1, e.g. [32, 64]")
        require_int("model.kernel", m.kernel, 1)
    require(not cfg.compile, "compile", cfg.compile, "false with task=classify (compile speeds up DRAW's steps)")


def validate_train_config(cfg: DictConfig) -> None:
    task = cfg.task.name
    require(task in TASK_DATA, "task.name", task, f"one of {', '.join(TASK_DATA)}")
    d, o = cfg.data, cfg.optim
    require(d._target_ in TASK_DATA[task], "data", d._target_, f"a data set for task={task}: one whose _target_ is "
            f"{' or '.join(TASK_DATA[task])}")
    (check_draw_config if task == "generate" else check_classifier_config)(cfg)
    require_int("data.batch_size", d.batch_size, 1)
    require_int("data.val_size", d.val_size, 1)
    require_int("data.num_workers", d.num_workers, 0)
    require(_is_number(o.lr) and 0 < o.lr < 1, "optim.lr", o.lr, "a number > 0 and < 1")
    if "betas" in o:
        betas = list(o.betas) if not isinstance(o.betas, (str, int, float)) else o.betas
        require(
            isinstance(betas, list) and len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas),
            "optim.betas", betas, "two numbers in [0, 1), e.g. [0.5, 0.999]",
        )
    if "weight_decay" in o:
        require(_is_number(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a number >= 0")
    require(cfg.scheduler.name in SCHEDULES, "scheduler.name", cfg.scheduler.name, f"one of {', '.join(SCHEDULES)}")
    if cfg.trainer.max_epochs != -1:  # -1: Lightning's "until stopped" (Ctrl-C, SIGTERM, max_steps, max_time)
        require(_is_int(cfg.trainer.max_epochs) and cfg.trainer.max_epochs >= 1, "trainer.max_epochs",
                cfg.trainer.max_epochs, "an integer >= 1, or -1: until stopped")
    elif cfg.scheduler.name in ("cosine", "onecycle") and cfg.trainer.get("max_steps", -1) == -1:
        require(False, "trainer.max_epochs", -1, f"a number of epochs >= 1 with scheduler={cfg.scheduler.name}, whose lr "
                "falls over the whole run (or set +trainer.max_steps)")
    check_accelerator("trainer.accelerator", cfg.trainer.accelerator)
    require_int("checkpoint_every_n_steps", cfg.checkpoint_every_n_steps, 0)
    require(_is_number(cfg.checkpoint_every_minutes) and cfg.checkpoint_every_minutes >= 0, "checkpoint_every_minutes",
            cfg.checkpoint_every_minutes, "a number >= 0 (0: off)")
    require_int("max_nonfinite_steps", cfg.max_nonfinite_steps, 1)
    only = cfg.get("train_only")
    require(only is None or (isinstance(only, ListConfig) and len(only) and all(isinstance(n, str) for n in only)),
            "train_only", only, "null or a list of parameter names, e.g. [model.prior]")
    require_int("seed", cfg.seed, 0)
    require(cfg.float32_matmul_precision in MATMUL_PRECISIONS, "float32_matmul_precision", cfg.float32_matmul_precision,
            f"one of {', '.join(MATMUL_PRECISIONS)}")
    require(isinstance(cfg.compile, bool), "compile", cfg.compile, "true or false")
    for name, logger in configured_loggers(cfg).items():
        required = logger.get("requires")
        if required and importlib.util.find_spec(required) is None:
            raise UserError(f"logger={name} needs the {required} package: pip install -e '.[{required}]' (or pip install {required})")


def configured_loggers(cfg: DictConfig) -> dict:
    """The `logger` group's loggers by name: its entries with a _target_. Plain keys beside them are settings the
    loggers interpolate (logger=wandb's `offline`, so that logger.offline=true works as in other templates)."""
    return {name: node for name, node in (cfg.get("logger") or {}).items() if isinstance(node, DictConfig) and "_target_" in node}


def read_checkpoint(path, key: str = "ckpt_path") -> dict:
    """A train.py checkpoint loaded as data (weights_only), or one line saying why it cannot be."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{key}={path} is a folder: give a .ckpt file in it ({path}/checkpoints/last.ckpt resumes a run)")
    if not path.is_file():
        raise UserError(f"{key}={path} does not exist: give the path of a .ckpt that train.py wrote")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding code rather than data
        raise UserError(f"{key}={path} is not a readable checkpoint ({type(e).__name__}: truncated, or not a .ckpt that train.py "
                        "wrote)") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint.get("hyper_parameters", {}):
        raise UserError(f"{key}={path} is not a DRAW checkpoint: it holds no model hyper-parameters")
    return checkpoint


def check_same_task(checkpoint: dict, cfg: DictConfig, path, key: str = "ckpt_path") -> None:
    """A DRAW checkpoint for task=generate, a classifier's for task=classify."""
    model = checkpoint["hyper_parameters"]["model"]
    if cfg.task.name == "generate":
        require("architecture" not in model, key, str(path),
                "a DRAW checkpoint with task=generate (this one is a classifier's: add task=classify)")
    else:
        require("architecture" in model, key, str(path), "a classifier's checkpoint with task=classify (this one is DRAW's)")


def check_same_settings(checkpoint: dict, cfg: DictConfig, path) -> None:
    """Resuming needs the checkpoint's sizes and batch size (the lr schedule and the place within the epoch count its
    steps): name the first setting of the model (and for DRAW, attention) groups, or data.batch_size, that differs.
    A setting the checkpoint predates counts as its config's default."""
    check_same_task(checkpoint, cfg, path)
    model = checkpoint["hyper_parameters"]["model"]
    if cfg.task.name == "generate":
        saved, groups = {**vars(DRAWConfig()), **model}, ("model", "attention")
    else:
        saved, groups = {**classifier_defaults(model["architecture"]), **model}, ("model",)
    settings = [(f"{group}.{name}", saved.get(name), value) for group in groups for name, value in cfg[group].items()]
    saved_data = checkpoint.get("datamodule_hyper_parameters", {})
    settings.append(("data.batch_size", saved_data.get("batch_size", cfg.data.batch_size), cfg.data.batch_size))
    for key, trained, value in settings:
        if (OmegaConf.to_object(value) if OmegaConf.is_config(value) else value) != trained:
            raise UserError(f"ckpt_path={path} was trained with {key}={trained!r} but this run has {key}={value!r}: "
                            "resume with the checkpoint's settings, or start a new run")


def load_weights(module, checkpoint: dict, path) -> None:
    """init_from: the checkpoint's weights into a new run's module, or one line naming the first weight whose
    shape differs (the settings that size a weight must match; read_init, T or glimpses need not)."""
    own = module.state_dict()
    for name, weight in checkpoint["state_dict"].items():
        if name not in own or own[name].shape != weight.shape:
            have = tuple(own[name].shape) if name in own else "no such weight"
            raise UserError(f"init_from={path} does not fit this model: its {name} is {tuple(weight.shape)}, "
                            f"this run's {have}: give the model the checkpoint's sizes")
    missing = sorted(set(own) - set(checkpoint["state_dict"]))
    # Weights beyond the paper's (a learned prior) added to a model keep their start: the model's own bound.
    optional = tuple(f"model.{name}" for name in getattr(module.model, "OPTIONAL_WEIGHTS", ()))
    added = {name for name in missing if name.startswith(optional)}
    if set(missing) - added:
        missing = sorted(set(missing) - added)
        raise UserError(f"init_from={path} lacks weights this model has ({', '.join(missing[:3])}): give the model the checkpoint's sizes")
    module.load_state_dict(checkpoint["state_dict"], strict=not added)


def check_writable(folder) -> None:
    """The folder, or the nearest existing folder above it, must take new files."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(existing)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(f"output folder {folder} cannot be written ({type(e).__name__}): choose another with hydra.run.dir=... "
                        "or hydra.sweep.dir=...") from None


class CheckOutputFolder(Callback):
    """Hydra callback: stop with one line before Hydra creates an output folder it cannot write."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.sweep.dir)

    @staticmethod
    def _check(folder) -> None:
        try:
            check_writable(folder)
        except UserError as e:
            exit_with(e)
