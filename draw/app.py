"""What the two Hydra apps need before anything heavy is imported: the config folder, the resolvers the configs
use, the command's own name and the shipped checkpoints' names. Kept free of torch and Lightning, so that
`--help` and a rejected command answer in a moment."""
import functools
import hashlib
import shlex
import shutil
import sys
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from draw.errors import UserError


def _conf_dir() -> Path:
    """conf/ beside the package in a checkout or an editable install; inside it (draw.conf) in an installed wheel."""
    checkout = Path(__file__).resolve().parents[1] / "conf"
    return checkout if checkout.is_dir() else Path(__file__).resolve().parent / "conf"


CONF = _conf_dir()

# The checkpoints that ship inside the package, named pretrained:NAME wherever a checkpoint path is taken.
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
PRETRAINED_PREFIX = "pretrained:"


def checkpoint_path(value, key: str, output_dir="outputs") -> Optional[Path]:
    """What a checkpoint key (ckpt_path, init_from) names: pretrained:NAME, the shipped draw/pretrained/NAME.ckpt;
    last, the newest <output_dir>/*/*/checkpoints/last.ckpt; for init_from, a run's folder, its best checkpoint (so
    that a chain of legs is one command: init_from=runs/leg1); anything else a path, as it is (None: None)."""
    if value is None:
        return None
    if key == "init_from" and Path(value).is_dir():
        return best_checkpoint(Path(value), key)
    if value == "last":
        candidates = sorted(Path(output_dir).glob("*/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise UserError(f"{key}=last found no {output_dir}/*/*/checkpoints/last.ckpt here: give the checkpoint's path")
        return candidates[-1]
    if not str(value).startswith(PRETRAINED_PREFIX):
        return Path(value)
    path = PRETRAINED_DIR / f"{str(value)[len(PRETRAINED_PREFIX):]}.ckpt"
    if not path.is_file():
        shipped = ", ".join(PRETRAINED_PREFIX + p.stem for p in sorted(PRETRAINED_DIR.glob("*.ckpt")))
        raise UserError(f"{key}={value} is not a shipped model: use one of {shipped}, or a .ckpt file's path")
    return path


def best_checkpoint(run: Path, key: str) -> Path:
    """The checkpoint a finished run tested: the one checkpoints/epoch*.ckpt that callbacks.best_checkpoint keeps."""
    found = sorted((run / "checkpoints").glob("epoch*.ckpt"))
    if len(found) != 1:
        held = f"{len(found)} of them ({', '.join(p.name for p in found)})" if found else "none"
        raise UserError(f"{key}={run} is a folder, whose checkpoints/epoch*.ckpt (a run's best) are {held}: give one .ckpt file's path")
    return found[0]


def command(script: str) -> str:
    """How the user started this script: draw-train / draw-sample where draw is installed, else python train.py."""
    installed = f"draw-{script}"
    return installed if Path(sys.argv[0]).name == installed else f"python {script}.py"


def command_line(script: str, args) -> str:
    """A command to print for the user to paste: `script` as command() names it, each argument quoted where a shell
    would split or expand it (attention.write_init={stride: 4, var: 4} stays one argument)."""
    return " ".join([command(script), shlex.join(args)])


def _split_overrides(override_dirname: str) -> list:
    """"a=1,b=[x,y],c=2" -> ["a=1", "b=[x,y]", "c=2"]: commas inside brackets or braces belong to a value."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(override_dirname):
        depth += (char in "[{(") - (char in "]})")
        if char == "," and depth == 0:
            items.append(override_dirname[start:i])
            start = i + 1
    items.append(override_dirname[start:])
    return [item for item in items if item]


def _override_key(item: str) -> str:
    return item.split("=", 1)[0].lstrip("+~")


def swept_keys(root: Optional[DictConfig]) -> list:
    """The keys a sweep varies: its sweeper's `params` (sweep=paper, Optuna's search space) and the command line's
    comma-separated or range() values, read from the multirun.yaml that Hydra writes before the first job."""
    if root is None:
        return []
    keys = list(OmegaConf.select(root, "hydra.sweeper.params", default=None) or {})
    try:
        saved = OmegaConf.load(Path(root.hydra.sweep.dir) / "multirun.yaml").hydra.overrides.task
    except Exception:  # noqa: BLE001 -- a sweeper that writes none; its params above still count
        return keys
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(list(saved)):
        key = override.get_key_element().lstrip("+~")
        if override.is_sweep_override() and key not in keys:
            keys.append(key)
    return keys


def job_folder(override_dirname: str, _root_: Optional[DictConfig] = None) -> str:
    """A sweep job's folder name (conf/config.yaml's hydra.sweep.subdir): its overrides, what the sweep varies first
    ("experiment=paper_mnist_attention,++trainer.limit_train_batches=20"), then the rest as Hydra sorts them; "defaults"
    when it has none. A name with a path's slashes (as "_": init_from=runs/a/last.ckpt would nest folders) or beyond
    120 characters (file names end at 255) is cut to 100 and ends with a hash of the overrides, so that runs/a_b/x and
    runs/a/b_x stay two folders."""
    varied = swept_keys(_root_)
    items = sorted(_split_overrides(override_dirname),
                   key=lambda item: varied.index(_override_key(item)) if _override_key(item) in varied else len(varied))
    ordered = ",".join(items)
    name = ordered.replace("/", "_")
    if name != ordered or len(name) > 120:
        return f"{name[:100]}...{hashlib.sha1(override_dirname.encode()).hexdigest()[:10]}"
    return name or "defaults"


# The folders unique_folder made in this process, each with the folders above it that it made, innermost first:
# a run rejected before any work removes them again (remove_untouched_run_folders).
CREATED_FOLDERS = []


@functools.lru_cache(maxsize=None)  # Hydra resolves the run folder several times in one process: one answer
def unique_folder(path: str) -> str:
    """`path`, or `path-2`, `path-3`, ...: the first one this process creates. mkdir is atomic, so two runs
    started in the same second (the default folder's resolution) never share a folder. A folder that
    cannot be made is returned as it is, for the output-folder check to report."""
    for n in range(1, 1000):
        candidate = Path(path if n == 1 else f"{path}-{n}")
        new = [folder for folder in (candidate, *candidate.parents) if not folder.exists()]
        try:
            candidate.mkdir(parents=True)
            CREATED_FOLDERS.append(new)
            return str(candidate)
        except FileExistsError:
            continue
        except OSError:
            return path
    return path


def remove_untouched_run_folders() -> None:
    """The folders unique_folder made that hold only what Hydra writes before the run starts (.hydra/, the log file),
    with the folders above them that it made and that are now empty: a rejected run leaves nothing behind."""
    for made in CREATED_FOLDERS:
        if made and made[0].is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in made[0].iterdir()):
            shutil.rmtree(made[0])
            for parent in made[1:]:
                try:
                    parent.rmdir()
                except OSError:  # holds something else
                    break


OmegaConf.register_new_resolver("job_folder", job_folder, replace=True)
OmegaConf.register_new_resolver("unique_folder", unique_folder, replace=True)
OmegaConf.register_new_resolver("command", command, replace=True)
# A metric's name in a file name: val/nll -> val_nll (conf/callbacks/best_checkpoint.yaml).
OmegaConf.register_new_resolver("file_safe", lambda name: name.replace("/", "_"), replace=True)
