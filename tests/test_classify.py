"""Classification through DRAW's read (the paper's Section 4.1, Table 1): cluttered MNIST, the classifiers, the
task's runs, pictures and input checks."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_config, run_script, sample_config, write_idx
from draw.attention import init_window
from draw.classifier import GlimpseClassifier, GlimpseConfig, build_classifier
from draw.data import ClutteredMNISTDataModule
from draw.data.cluttered import cluttered_images
from draw.errors import UserError
from draw.report import write_summary
from draw.run import train
from draw.sample import PRETRAINED_CLASSIFIER, sample


@pytest.fixture(scope="module")
def bars_mnist(tmp_path_factory):
    """MNIST files whose 'digits' are learnable: label 0 a vertical bar, label 1 a horizontal one, at random places."""
    root = tmp_path_factory.mktemp("bars")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 400), ("t10k", 100)):
        labels = np.arange(n) % 2
        images = np.zeros((n, 28, 28), np.uint8)
        for image, label in zip(images, labels):
            at, start = rng.integers(4, 24), rng.integers(2, 10)
            bar = (slice(start, start + 16), slice(at - 2, at + 2))
            image[bar if label == 0 else bar[::-1]] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


# A classification run that takes seconds on bars_mnist. Batches of 10 at lr 3e-3 (30 steps an epoch) learned it under
# every seed tried (0-9: 3-10 % test error); batches of 50 at lr 1e-2 (6 steps) stayed near chance under some (seed 3: 44 %).
TINY_CLASSIFY = ["task=classify", "data.size=40", "data.distractors=2", "data.val_size=100", "data.batch_size=10",
                 "model.glimpses=3", "model.read_n=6", "model.hidden_size=32", "model.read_init.var=4", "optim.lr=3e-3",
                 "optim.betas=[0.9,0.999]",
                 "trainer.max_epochs=10", "trainer.log_every_n_steps=1"]


# ---------------------------------------------------------------------------------------------------- data


def test_cluttered_images_hold_the_whole_digit_at_a_random_place():
    digits = torch.zeros(200, 28, 28, dtype=torch.uint8)
    digits[:, 3:25, 5:23] = 200  # a block with known extent
    images = cluttered_images(digits, digits, size=60, distractors=0, distractor_size=8)
    assert images.shape == (200, 60, 60) and images.dtype == torch.uint8
    assert (images.flatten(1).sum(1) == digits.flatten(1).sum(1)).all()  # nothing of the digit is cut off
    rows = (images > 0).any(2).float().argmax(1)  # each image's first lit row
    assert len(rows.unique()) > 10  # the places vary over the whole range
    assert rows.min() >= 3 and rows.max() <= 60 - 25 + 3


def test_clutter_is_pieces_of_digits_added_and_clipped():
    sources = torch.full((50, 28, 28), 200, dtype=torch.uint8)
    blank = torch.zeros(100, 28, 28, dtype=torch.uint8)
    images = cluttered_images(blank, sources, size=100, distractors=8, distractor_size=8)
    lit = (images > 0).flatten(1).sum(1)
    assert (lit > 0).all() and (lit <= 8 * 64).all()  # eight 8 x 8 pieces at most, some overlapping
    assert images.max() == 255 and set(images.unique().tolist()) <= {0, 200, 255}  # overlaps clipped, not wrapped


def test_validation_and_test_images_are_fixed_and_training_images_new(tiny_mnist):
    builds = []
    for _ in range(2):
        datamodule = ClutteredMNISTDataModule(str(tiny_mnist), val_size=40, size=60)
        datamodule.setup()
        builds.append(datamodule)
    for split in ("val", "test"):
        (x1, y1), (x2, y2) = (b.datasets[split].__getitems__(list(range(20))) for b in builds)
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (20, 60, 60)
    train = builds[0].datasets["train"]
    assert not torch.equal(train.__getitems__([0, 1])[0], train.__getitems__([0, 1])[0])  # new places each time
    assert 0 <= float(x1.min()) and float(x1.max()) <= 1


@pytest.mark.parametrize("setting,message", [
    ({"size": 20}, "data.size=20 must be >= 28"),
    ({"distractor_size": 30}, "data.distractor_size=30 must be in 1..28"),
])
def test_bad_data_settings_are_one_line(setting, message):
    with pytest.raises(UserError, match=message):
        ClutteredMNISTDataModule(**setting)


# ---------------------------------------------------------------------------------------------------- models


def test_glimpse_classifier_shapes_and_recording():
    model = GlimpseClassifier(GlimpseConfig(height=40, width=50, glimpses=3, read_n=5, hidden_size=16))
    out = model(torch.rand(4, 40, 50), record=True)
    assert out.logits.shape == (4, 10)
    assert len(out.windows) == len(out.glimpses) == 3 and out.glimpses[0].shape == (4, 5, 5)
    assert model(torch.rand(4, 40, 50), glimpses=5).logits.shape == (4, 10)
    assert build_classifier({"architecture": "cnn", "height": 40, "width": 50})(torch.rand(4, 40, 50)).logits.shape == (4, 10)


def test_a_whole_image_window_reads_the_downsampled_image():
    """The classifier's read is DRAW's filterbank: a window centred on a 24 x 24 image with 6 x 6 filters 4 pixels
    apart, narrow and of intensity 1, reads an image made of 4 x 4 blocks as its 6 x 6 block values."""
    model = GlimpseClassifier(GlimpseConfig(height=24, width=24, glimpses=1, read_n=6, hidden_size=8))
    with torch.no_grad():
        model.window_params.weight.zero_()
        model.window_params.bias.zero_()  # centre: g~ = 0
    init_window(model.window_params, 6, 24, 24, stride=4, var=0.01, gamma=1)
    blocks = torch.rand(2, 6, 6)
    image = blocks.repeat_interleave(4, 1).repeat_interleave(4, 2)  # (2, 24, 24)
    glimpse = model(image, record=True).glimpses[0]
    assert torch.allclose(glimpse, blocks, atol=1e-4)


# ---------------------------------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def classify_run(bars_mnist, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("classify")
    proc = run_script("train.py", cwd, f"data.data_dir={bars_mnist}", *TINY_CLASSIFY, f"hydra.run.dir={cwd}/run")
    return cwd / "run", proc.stdout + proc.stderr


@pytest.mark.slow
def test_training_lowers_the_error_and_reports_it(classify_run):
    run, output = classify_run
    metrics = json.loads((run / "metrics.json").read_text())
    errors = [float(line.split(",")[3]) for line in (run / "validation.csv").read_text().splitlines()[1:]]
    assert errors[-1] < errors[0] and metrics["test/error"] < 25  # two classes: chance is 50 %
    assert metrics["monitor"] == "val/error" and metrics["val/error_best"] == min(errors)
    assert f"test error: {metrics['test/error']:.2f} %" in output
    assert "model: glimpse classifier" in output


@pytest.mark.slow
def test_tensorboard_gets_the_glimpse_pictures_each_validation(classify_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = classify_run
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {"glimpses", "misclassified"} <= set(events.Tags()["images"])
    assert len(events.Images("glimpses")) == 10  # one per epoch


@pytest.mark.slow
def test_glimpse_pictures_of_a_checkpoint(classify_run, bars_mnist, tmp_path):
    run, _ = classify_run
    out = sample(sample_config(f"ckpt_path={run}/checkpoints/last.ckpt", f"data.data_dir={bars_mnist}", "n=4", "scale=1"), str(tmp_path))
    picture = Image.open(out / "glimpses.png")
    assert picture.size[0] > 4 * 40 and picture.size[1] > 4 * 40  # the image and 3 glimpses per row, 4 rows
    assert Image.open(out / "glimpses.gif").n_frames == 3  # one glimpse more each frame
    with pytest.raises(UserError, match="does not apply to .* a classifier's checkpoint: use mode=glimpses"):
        sample(sample_config(f"ckpt_path={run}/checkpoints/last.ckpt", "mode=prior"), str(tmp_path / "again"))


@pytest.mark.slow
def test_classification_sweep_summary_is_sorted_by_test_error(bars_mnist, tmp_path):
    run_script("train.py", tmp_path, "-m", f"data.data_dir={bars_mnist}", *TINY_CLASSIFY, "trainer.max_epochs=2",
               "model.glimpses=1,3", f"hydra.sweep.dir={tmp_path}/sweep")
    rows = write_summary(tmp_path / "sweep")
    errors = [row["test/error"] for row in rows]
    assert len(errors) == 2 and errors == sorted(errors) and not any(math.isnan(e) for e in errors)
    assert "test/error" in (tmp_path / "sweep" / "summary.md").read_text()


def test_every_classification_experiment_composes_with_the_papers_sizes():
    for glimpses in (4, 8):
        cfg = compose_config(f"experiment=paper_cluttered_{glimpses}glimpses")
        assert (cfg.model.glimpses, cfg.model.read_n, cfg.model.hidden_size, cfg.data.size) == (glimpses, 12, 256, 100)
        assert cfg.task.monitor == "val/error" and "attention" not in cfg
    assert compose_config("experiment=paper_cluttered_cnn").model.architecture == "cnn"


@pytest.mark.parametrize("override,message", [
    ("model.glimpses=0", "model.glimpses=0 is not allowed: an integer >= 1"),
    ("model.read_n=200", "model.read_n=200 is not allowed: an integer >= 1 and <= 40"),
    ("model.height=50", r"model.height=50 is not allowed: data.size \(40\)"),
    ("compile=true", "compile=True is not allowed: false with task=classify"),
])
def test_bad_classification_settings_are_one_line(override, message, bars_mnist, tmp_path):
    with pytest.raises(UserError, match=message):
        train(compose_config(*TINY_CLASSIFY, override, f"data.data_dir={bars_mnist}"), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_unknown_task_lists_the_options(tmp_path):
    proc = run_script("train.py", tmp_path, "task=segment", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "Could not find 'task/segment'" in proc.stderr and "classify" in proc.stderr


def test_resuming_a_draw_checkpoint_as_a_classifier_is_one_line(tmp_path, bars_mnist):
    import pytorch_lightning as pl

    from conftest import tiny_module

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(tiny_module())
    trainer.save_checkpoint(tmp_path / "draw.ckpt")
    with pytest.raises(UserError, match="a classifier's checkpoint with task=classify"):
        train(compose_config(*TINY_CLASSIFY, f"ckpt_path={tmp_path}/draw.ckpt", f"data.data_dir={bars_mnist}"), str(tmp_path / "run"))


@pytest.mark.parametrize("checkpoint,glimpses", [
    (None, 8),  # mode=glimpses alone takes the 8-glimpse classifier
    (PRETRAINED_CLASSIFIER.with_name("glimpse4_cluttered_mnist.ckpt"), 4),
])
def test_shipped_classifiers_show_their_glimpses(tiny_mnist, tmp_path, checkpoint, glimpses):
    """The classifiers that ship with draw: their test images are remade from their own data settings
    (100 x 100, 8 distractors) out of whatever MNIST files data.data_dir holds."""
    shipped = checkpoint or PRETRAINED_CLASSIFIER
    assert shipped.stat().st_size < 10 * 2**20
    choice = [f"ckpt_path={checkpoint}"] if checkpoint else []
    out = sample(sample_config("mode=glimpses", *choice, f"data.data_dir={tiny_mnist}", "n=3", "scale=1"), str(tmp_path))
    frames = Image.open(out / "glimpses.gif")
    assert frames.n_frames == glimpses  # one more glimpse each frame
    assert Image.open(out / "glimpses.png").size[0] > (glimpses + 1) * 100  # the image and each glimpse, 100 px wide
