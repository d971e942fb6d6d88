"""Shrink a training checkpoint to what sampling needs: python -m draw.export SRC.ckpt DST.ckpt

Keeps the weights, the hyper-parameters and where training stood (epoch, step); drops the optimizer,
loop and callback states, about two thirds of the file. The result still loads with
DRAWModule (or ClassifierModule).load_from_checkpoint and sample.py, but cannot resume training."""
import sys

import torch

from draw.config import read_checkpoint
from draw.errors import exit_with_help_if_asked

# The data module's settings too: a classifier's pictures remake its test images from them.
KEPT = ("state_dict", "hyper_parameters", "hparams_name", "epoch", "global_step", "pytorch-lightning_version",
        "datamodule_hparams_name", "datamodule_hyper_parameters")


def export(src, dst) -> dict:
    checkpoint = read_checkpoint(src, key="SRC")
    small = {key: checkpoint[key] for key in KEPT if key in checkpoint}
    torch.save(small, dst)
    return small


if __name__ == "__main__":
    exit_with_help_if_asked(sys.argv[1:], __doc__)
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m draw.export SRC.ckpt DST.ckpt")
    export(*sys.argv[1:])
