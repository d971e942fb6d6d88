import pytest
import torch
from torchvision.datasets import MNIST

from draw.data import BinarizedImages, MNISTDataModule, MNISTNotFoundError
from draw.errors import UserError


def datamodule(data_dir, **kw):
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=32, val_size=40, **kw)
    dm.prepare_data()
    dm.setup()
    return dm


def test_split_is_first_and_last_of_the_train_file(tiny_mnist):
    dm = datamodule(tiny_mnist, binarization="none", eval_binarization="none")
    raw = MNIST(str(tiny_mnist), train=True).data.float() / 255
    assert len(dm.datasets["train"]) == 200 and len(dm.datasets["val"]) == 40 and len(dm.datasets["test"]) == 60
    torch.testing.assert_close(dm.datasets["train"].images, raw[:200])
    torch.testing.assert_close(dm.datasets["val"].images, raw[200:])


def test_loaders_serve_whole_batches_of_images(tiny_mnist):
    dm = datamodule(tiny_mnist)
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (32, 28, 28) and batch.dtype == torch.float32
    assert set(batch.unique().tolist()) <= {0.0, 1.0}
    assert sum(len(b) for b in dm.val_dataloader()) == 40


def test_fixed_binarization_is_seeded_and_comparable_across_runs(tiny_mnist):
    a, b = datamodule(tiny_mnist), datamodule(tiny_mnist)
    other_seed = datamodule(tiny_mnist, binarization_seed=1)
    for split in ("val", "test"):
        val = a.datasets[split].images
        assert set(val.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(val, b.datasets[split].images)
        assert not torch.equal(val, other_seed.datasets[split].images)
        assert torch.equal(val[:5], a.datasets[split].__getitems__(list(range(5))))  # served unchanged


def test_dynamic_binarization_draws_afresh_each_time():
    grey = torch.full((4, 28, 28), 0.3)
    data = BinarizedImages(grey, "dynamic")
    first, second = data.__getitems__([0, 1, 2, 3]), data.__getitems__([0, 1, 2, 3])
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)
    assert abs(torch.cat([first, second]).mean().item() - 0.3) < 0.05


def test_threshold_and_grey_modes():
    images = torch.tensor([[[0, 127, 128, 255]]], dtype=torch.uint8)
    assert BinarizedImages(images, "threshold")[0].tolist() == [[0.0, 0.0, 1.0, 1.0]]
    torch.testing.assert_close(BinarizedImages(images, "none")[0], images[0].float() / 255)


def test_unknown_binarization_names_the_key_and_the_choices():
    with pytest.raises(UserError, match=r"data.binarization='random'.*dynamic, fixed, threshold, none"):
        MNISTDataModule(binarization="random")


def test_missing_mnist_that_cannot_download_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # refused at once: no network wait
    with pytest.raises(MNISTNotFoundError, match=r"MNIST \(train-images-idx3-ubyte.*\) is not in .*MNIST/raw.*put them there"):
        MNISTDataModule(data_dir=str(tmp_path)).prepare_data()
