"""python -m draw.figures: each of the paper's figures is made, with the panels it should have."""
import torch
from PIL import Image

from draw import figures
from draw.viz import PAD


def test_nearest_neighbours_find_an_images_own_copy_at_distance_zero():
    pool = torch.rand(50, 28, 28)
    index, distance = figures.nearest_neighbours(pool[[3, 41]], pool, chunk=16)  # across chunks
    assert index.tolist() == [3, 41] and distance.abs().max() < 1e-3


def test_second_piece_is_the_second_largest_piece_of_ink():
    images = torch.zeros(4, 30, 30)
    images[0, 2:12, 2:12] = 1  # one piece
    images[1, 2:12, 2:12], images[1, 20:28, 20:28] = 1, 0.9  # two: 100 and 64 pixels
    images[2, 2:12, 2:12], images[2, 12:20, 12:20] = 1, 1  # two squares touching at a corner: one piece
    images[3, 2:12, 2:12], images[3, 20:28, 20:28] = 1, 0.4  # the second too faint to be ink
    assert figures.second_piece(images).tolist() == [0.0, 64.0, 0.0, 0.0]


def test_filterbank_figure_is_the_grid_and_three_patches():
    picture = figures.filterbank_figure(torch.rand(28, 28), N=6)
    assert picture.shape == (3, 28 + 2 * PAD, 4 * (28 + PAD) + PAD)


def test_zoom_figure_reads_and_writes_back_at_each_stride():
    image = torch.zeros(100, 100)
    image[40:60, 45:55] = 1
    picture = figures.zoom_figure(image, N=12, strides=(4.0, 1.0))
    assert picture.shape == (3, 2 * (100 + PAD) + PAD, 3 * (100 + PAD) + PAD)
    w = figures.window(50.5, 50.5, 1.0, 0.25)
    written = figures.write_back(figures.read_patch(image, w, 12), w, 100, 100)
    assert written[44:56, 44:56].sum() > 0.9 * written.sum()  # a stride-1 window writes back where it read


def test_make_figures_writes_every_figure_and_its_index(trained_run, tiny_mnist, tmp_path):
    from omegaconf import OmegaConf

    _, run, _ = trained_run
    ckpt = str(run / "checkpoints" / "last.ckpt")
    cfg = OmegaConf.merge(OmegaConf.create(figures.DEFAULTS), {
        "out": str(tmp_path / "figures"), "paths": {"data_dir": str(tiny_mnist)}, "draw": ckpt, "sequences": ckpt, "two_digit": ckpt,
        "classifier": None, "n": 3})
    out = figures.make_figures(cfg)
    names = ["filterbank.png", "zoom.png", "nearest.png", "sequences.png", "two_digit.png", "two_digit_sequences.png"]
    assert all((out / name).is_file() for name in names)
    index = (out / "index.md").read_text()
    assert all(f"[{name}]" in index for name in names)
    # Fig. 8: a 3 x 3 grid of the model's 28 x 28 images, each pixel drawn 2 x 2
    cells = 3 * (28 + PAD) + PAD
    assert Image.open(out / "two_digit.png").size == (2 * cells, 2 * cells)
    assert "of the 9 have a second digit-sized piece of ink" in index


def test_figures_take_the_shipped_mnist_models_for_mnist_only():
    mnist = figures.figures_config([])
    assert (mnist.sequences, mnist.two_digit) == ("pretrained:draw_mnist_noattention", "pretrained:draw_two_digit_mnist")
    assert figures.figures_config(["two_digit=null"]).two_digit is None
    assert figures.figures_config(["sequences=run.ckpt"]).sequences == "run.ckpt"
    colour = figures.figures_config(["data=cifar10", "draw=run.ckpt"])
    assert (colour.sequences, colour.two_digit) == (None, None)
