"""Beyond one MNIST digit (the paper's Sections 4.2-4.4): two-digit MNIST, SVHN and CIFAR-10 read from tiny files
in each data set's own format by torchvision's own readers, colour DRAW end to end, and old checkpoints."""
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from torchvision.datasets import CIFAR10, SVHN

from conftest import compose_config, run_script, sample_config, tiny_module
from draw import viz
from draw.data import CIFAR10DataModule, MNISTDataModule, SVHNDataModule, TwoDigitMNISTDataModule
from draw.errors import UserError
from draw.module import DRAWModule
from draw.run import train
from draw.sample import sample

# A colour DRAW run of seconds on the tiny files.
TINY_COLOUR = ["model.T=2", "model.z_size=4", "model.enc_size=16", "model.dec_size=16", "attention.read_n=3",
               "attention.write_n=3", "data.batch_size=10", "data.val_size=10", "trainer.max_epochs=1", "compile=false",
               "trainer.log_every_n_steps=1"]


def colour_images(n: int, seed: int) -> np.ndarray:
    """(n, 32, 32, 3) uint8: a bright square of a random colour at a random place on a dark background."""
    rng = np.random.default_rng(seed)
    images = np.full((n, 32, 32, 3), 20, np.uint8)
    for image in images:
        top, left = rng.integers(0, 20, 2)
        image[top:top + 12, left:left + 12] = rng.integers(60, 256, 3)
    return images


@pytest.fixture(scope="module")
def tiny_svhn(tmp_path_factory):
    """SVHN's train_32x32.mat and test_32x32.mat as torchvision reads them: X (32, 32, 3, N) uint8, y (N, 1) in 1..10."""
    root = tmp_path_factory.mktemp("data")
    (root / "svhn").mkdir()
    for split, n in (("train", 40), ("test", 20)):
        savemat(root / "svhn" / f"{split}_32x32.mat", {"X": colour_images(n, 0).transpose(1, 2, 3, 0),
                                                      "y": (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)})
    return root


@pytest.fixture(scope="module")
def tiny_cifar10(tmp_path_factory):
    """CIFAR-10's python batches as torchvision reads them: pickled dicts with data (N, 3072) uint8, channel-major."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images = colour_images(8, i).transpose(0, 3, 1, 2).reshape(8, -1)  # (N, 3*32*32), R then G then B planes
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images, "labels": list(range(8))}, f)
    return root


@pytest.mark.parametrize("module,fixture,train_images", [(SVHNDataModule, "tiny_svhn", 40), (CIFAR10DataModule, "tiny_cifar10", 40)])
def test_colour_data_sets_are_read_by_torchvisions_readers(module, fixture, train_images, request):
    data_dir = request.getfixturevalue(fixture)
    datamodule = module(str(data_dir), val_size=10)
    datamodule.prepare_data()
    datamodule.setup()
    assert len(datamodule.datasets["train"]) == train_images - 10 and len(datamodule.datasets["val"]) == 10
    x = datamodule.datasets["test"].__getitems__([0, 1])
    assert x.shape == (2, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    # The colour survives: the square's three channels differ (a grey copy would make them equal).
    assert not torch.equal(x[:, 0], x[:, 1])


def test_colour_images_can_be_resized(tiny_svhn):
    datamodule = SVHNDataModule(str(tiny_svhn), val_size=10, height=64, width=48)
    datamodule.setup("test")
    assert datamodule.datasets["test"].images.shape == (20, 3, 64, 48)


@pytest.mark.parametrize("module,patch,files", [
    (SVHNDataModule, lambda mp: mp.setitem(SVHN.split_list, "train", ["http://127.0.0.1:9/x.mat", "train_32x32.mat", ""]),
     "SVHN's train_32x32.mat and test_32x32.mat are not in"),
    (CIFAR10DataModule, lambda mp: mp.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar.tar.gz"),
     "CIFAR-10's data_batch_1..5 and test_batch are not in"),
])
def test_missing_colour_files_say_where_to_put_them(module, patch, files, tmp_path, monkeypatch):
    patch(monkeypatch)  # refused at once: no network wait
    with pytest.raises(UserError, match=files) as error:
        module(str(tmp_path / "empty")).prepare_data()
    assert "put them there" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "empty").exists()  # the failed lookup left no folders behind


def test_two_digit_images_hold_two_digits_fixed_for_validation_and_test(tiny_mnist):
    builds = []
    for _ in range(2):
        datamodule = TwoDigitMNISTDataModule(str(tiny_mnist), val_size=40, eval_binarization="none")
        datamodule.setup()
        builds.append(datamodule)
    for split in ("val", "test"):
        assert torch.equal(builds[0].datasets[split].images, builds[1].datasets[split].images)
    images = builds[0].datasets["test"].images  # grey levels: eval_binarization none
    assert images.shape == (60, 60, 60)
    # Each of tiny_mnist's digits is one bar of 16 x 4 pixels: two bars light up to 128 pixels (less where they overlap).
    lit = (images > 0).flatten(1).sum(1)
    assert (lit > 64).float().mean() > 0.7 and (lit <= 128).all()
    train = builds[0].datasets["train"]
    assert not torch.equal(train.__getitems__([0, 1]), train.__getitems__([0, 1]))  # new partners and places


@pytest.mark.parametrize("experiment,fixture", [("paper_svhn", "tiny_svhn"), ("paper_cifar10", "tiny_cifar10"),
                                                ("paper_two_digit_mnist", "tiny_mnist")])
def test_paper_experiments_compose_and_train_a_few_steps(experiment, fixture, request, tmp_path):
    data_dir = request.getfixturevalue(fixture)
    metrics = train(compose_config(f"experiment={experiment}", f"data.data_dir={data_dir}", *TINY_COLOUR), str(tmp_path / "run"))
    assert metrics["status"] == "completed" and metrics["steps"] > 0 and np.isfinite(metrics["test/nll"])
    cfg = compose_config(f"experiment={experiment}")
    bits = metrics["test/nll"] / (np.log(2) * cfg.data.channels * cfg.data.height * cfg.data.width)
    assert metrics["test/bits_per_dim"] == pytest.approx(bits, rel=1e-4)


def test_table_3_sizes():
    svhn, cifar = compose_config("experiment=paper_svhn"), compose_config("experiment=paper_cifar10")
    assert (svhn.model.T, svhn.model.enc_size, svhn.model.z_size, svhn.attention.read_n, svhn.attention.write_n) == (32, 800, 100, 12, 12)
    sizes = (cifar.model.T, cifar.model.enc_size, cifar.model.z_size, cifar.attention.read_n, cifar.attention.write_n)
    assert sizes == (64, 400, 200, 5, 5)
    assert svhn.model.channels == cifar.model.channels == 3


@pytest.mark.slow
def test_colour_run_samples_in_colour(tiny_cifar10, tmp_path):
    run = tmp_path / "run"
    run_script("train.py", tmp_path, "experiment=paper_cifar10", f"data.data_dir={tiny_cifar10}", *TINY_COLOUR, f"hydra.run.dir={run}")
    assert "test/bits_per_dim" in json.loads((run / "metrics.json").read_text())
    out = sample(sample_config(f"ckpt_path={run}/checkpoints/last.ckpt", "n=4", "boxes=true", "scale=1"), str(tmp_path / "samples"))
    canvases = np.load(out / "canvases.npz")["canvases"]
    assert canvases.shape == (2, 4, 3, 32, 32)
    frame = np.asarray(Image.open(out / "samples.gif").convert("RGB"))
    assert frame.shape[0] > 2 * 32 and frame.shape[1] > 2 * 32


def test_colour_pictures_keep_their_colour():
    red = torch.zeros(4, 3, 10, 12)
    red[:, 0] = 1
    picture = viz.grid_of(red)
    assert picture.shape[0] == 3 and picture[0].max() == 1 and picture[1:, 3:8, 3:8].max() == 0
    frames = viz.frames(red.unsqueeze(0).expand(2, -1, -1, -1, -1), scale=2)
    assert len(frames) == 2 and np.asarray(frames[0])[5, 5].tolist() == [255, 0, 0]


@pytest.mark.parametrize("override,message", [
    ("data.channels=3", "data.channels=3 is not allowed: MNIST's images have 1"),
    ("data.height=32", "data.height=32, data.width=28 are not allowed: MNIST's images are 28 x 28"),
    ("model.height=32", r"model.height=32 is not allowed: data.height \(28\)"),
])
def test_shapes_not_fitting_the_data_are_one_line(override, message, tiny_mnist, tmp_path):
    with pytest.raises(UserError, match=message):
        cfg = compose_config(override, f"data.data_dir={tiny_mnist}")
        train(cfg, str(tmp_path / "run"))
        MNISTDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})


def test_a_checkpoint_from_before_colour_loads_as_grey(tmp_path):
    import pytorch_lightning as pl

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(tiny_module())
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=True)
    del checkpoint["hyper_parameters"]["model"]["channels"]  # as checkpoints were written before
    torch.save(checkpoint, tmp_path / "old.ckpt")
    module = DRAWModule.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=True)
    assert module.model.cfg.channels == 1 and module.model.sample(2, T=2)[0].shape == (2, 2, 28, 28)


def test_figures_of_a_colour_model_compare_it_with_its_own_training_images(tiny_cifar10, tmp_path):
    from omegaconf import OmegaConf

    from draw import figures

    run = tmp_path / "run"
    train(compose_config("experiment=paper_cifar10", f"data.data_dir={tiny_cifar10}", *TINY_COLOUR), str(run))
    cfg = OmegaConf.merge(OmegaConf.create(figures.DEFAULTS), {
        "out": str(tmp_path / "figures"), "data": "cifar10", "paths": {"data_dir": str(tiny_cifar10)},
        "draw": str(run / "checkpoints" / "last.ckpt"), "classifier": None, "n": 2})
    out = figures.make_figures(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["index.md", "nearest.png", "sequences.png"]  # MNIST's figures: data=mnist
    assert "cifar10 training image nearest" in (out / "index.md").read_text()
