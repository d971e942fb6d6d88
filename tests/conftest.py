import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Under pytest-xdist (-n auto) every core runs a test: one torch thread each (in-process and in the train.py
# processes the tests start), or the tests fight over the cores.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from draw.run import compose_config as _compose  # noqa: E402 -- after the thread setting, which torch reads at import

ROOT = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format of MNIST's *-ubyte files (magic 0x08 = unsigned byte)."""
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def fake_digits(n: int, seed: int) -> np.ndarray:
    """(n, 28, 28) uint8 images of one bright bar each, vertical or horizontal at a random place."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for image in images:
        at, start = rng.integers(6, 22), rng.integers(2, 10)
        bar = (slice(start, start + 16), slice(at - 2, at + 2))
        image[bar if rng.random() < 0.5 else bar[::-1]] = rng.integers(180, 256)
    return images


def write_mnist(root: Path, n_train: int = 240, n_test: int = 60) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", fake_digits(n, seed))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> Path:
    """A data_dir holding 240 train and 60 test MNIST-shaped images, read by torchvision's own reader."""
    return write_mnist(tmp_path_factory.mktemp("mnist"))


# Overrides that make a whole train.py run take seconds on tiny_mnist.
TINY_RUN = [
    "model.T=3",
    "model.z_size=4",
    "model.enc_size=16",
    "model.dec_size=16",
    "data.batch_size=20",
    "data.val_size=40",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "optim.lr=3e-3",
    "compile=false",
]


def run_script(script: str, cwd: Path, *overrides, check=True) -> subprocess.CompletedProcess:
    """Run train.py or sample.py with Hydra overrides as a user would, from cwd."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="session")
def trained_run(tiny_mnist, tmp_path_factory):
    """One tiny train.py run from an empty working folder: (working folder, its run folder, stdout)."""
    cwd = tmp_path_factory.mktemp("train")
    proc = run_script("train.py", cwd, f"data.data_dir={tiny_mnist}", *TINY_RUN)
    (run,) = (cwd / "outputs").glob("*/*")
    return cwd, run, proc.stdout


def job_folder(sweep: Path, override: str) -> Path:
    """The one job folder of a sweep whose overrides include `override` (folders are named by overrides)."""
    (folder,) = [p for p in sweep.iterdir() if p.is_dir() and override in p.name.split(",")]
    return folder


def compose_config(*overrides):
    """train.py's config with these overrides."""
    return _compose(overrides)


def sample_config(*overrides):
    """sample.py's config with these overrides."""
    return _compose(overrides, config_name="sample")


def tiny_module():
    """A DRAWModule small enough to fit in a second, built as a checkpoint would rebuild it."""
    from draw.model import DRAWConfig
    from draw.module import DRAWModule

    return DRAWModule(model=vars(DRAWConfig(T=2, z_size=4, enc_size=8, dec_size=8)), optim={"lr": 1e-3, "betas": [0.9, 0.999]})
