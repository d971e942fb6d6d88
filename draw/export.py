"""Shrink a training checkpoint to what sampling needs: python -m draw.export SRC.ckpt DST.ckpt [--half]

Keeps the weights, the hyper-parameters and where training stood (epoch, step); drops the optimizer,
loop and callback states, about two thirds of the file. The result still loads with
DRAWModule (or ClassifierModule).load_from_checkpoint and sample.py, but cannot resume training.
--half stores the weights as float16, half the file again (the model without attention: 11 MB to 5.5 MB);
loading casts them back to float32 (the shipped model's test bound moved by 0.0001 nats: docs/usage.md)."""
import sys

import torch

from draw.config import read_checkpoint
from draw.errors import exit_with_help_if_asked

# The data module's settings too: a classifier's pictures remake its test images from them.
KEPT = ("state_dict", "hyper_parameters", "hparams_name", "epoch", "global_step", "pytorch-lightning_version",
        "datamodule_hparams_name", "datamodule_hyper_parameters")


def export(src, dst, half: bool = False) -> dict:
    checkpoint = read_checkpoint(src, key="SRC")
    small = {key: checkpoint[key] for key in KEPT if key in checkpoint}
    if half:
        small["state_dict"] = {name: weight.half() if weight.is_floating_point() else weight
                               for name, weight in small["state_dict"].items()}
    torch.save(small, dst)
    return small


if __name__ == "__main__":
    exit_with_help_if_asked(sys.argv[1:], __doc__)
    flags = [arg for arg in sys.argv[1:] if arg.startswith("--")]
    paths = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
    if len(paths) != 2 or set(flags) - {"--half"}:
        raise SystemExit("usage: python -m draw.export SRC.ckpt DST.ckpt [--half]")
    export(*paths, half="--half" in flags)
