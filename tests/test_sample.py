import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_script, sample_config
from draw import viz
from draw.errors import UserError
from draw.sample import PRETRAINED, sample


def gif_frames(path):
    with Image.open(path) as gif:
        return [frame.convert("RGB").copy() for frame in _each_frame(gif)]


def _each_frame(gif):
    for i in range(gif.n_frames):
        gif.seek(i)
        yield gif


@pytest.fixture(scope="module")
def prior_samples(trained_run, tmp_path_factory):
    _, run, _ = trained_run
    out = tmp_path_factory.mktemp("prior")
    # The model was trained with T=3: drawing 5 steps is allowed.
    run_script("sample.py", out, f"ckpt_path={run}/checkpoints/last.ckpt", "n=6", "T=5", f"hydra.run.dir={out}")
    return out


def test_prior_sampling_writes_every_file(prior_samples):
    for name in ("samples.png", "steps.png", "samples.gif", "canvases.npz"):
        assert (prior_samples / name).is_file(), name


def test_gif_has_one_frame_per_step_of_the_grid_size(prior_samples):
    frames = gif_frames(prior_samples / "samples.gif")
    assert len(frames) == 5
    # 6 samples on a 3 x 2 grid of 28-pixel cells with 2-pixel gaps, enlarged 3 times (the default scale=3)
    assert frames[0].size == (3 * (3 * 30 + 2), 3 * (2 * 30 + 2))


def test_canvases_npz_has_stated_shapes_and_probabilities(prior_samples):
    data = np.load(prior_samples / "canvases.npz")
    assert data["canvases"].shape == (5, 6, 28, 28)
    assert data["canvases"].min() >= 0 and data["canvases"].max() <= 1
    for field in ("g_x", "g_y", "delta", "var", "gamma"):
        assert data[f"write_{field}"].shape == (5, 6)
    assert "read_g_x" not in data  # the prior has no read


def test_last_canvas_is_samples_png_enlarged_as_the_gif(prior_samples):
    canvases = torch.from_numpy(np.load(prior_samples / "canvases.npz")["canvases"])
    expected = (viz.enlarged(viz.grid(canvases[-1], nrow=3), 3) * 255).round().permute(1, 2, 0).numpy()  # scale=3
    png = np.asarray(Image.open(prior_samples / "samples.png").convert("RGB"), dtype=np.float64)
    assert png.shape == expected.shape
    assert np.abs(png - expected).max() <= 1


def test_reconstruction_with_boxes(trained_run, tiny_mnist, tmp_path):
    _, run, _ = trained_run
    cfg = sample_config(f"ckpt_path={run}/checkpoints/last.ckpt", "mode=reconstruct", "boxes=true", "n=4",
                        f"data.data_dir={tiny_mnist}", "scale=3")
    sample(cfg, str(tmp_path))
    data = np.load(tmp_path / "canvases.npz")
    assert data["canvases"].shape == (3, 4, 28, 28) and data["originals"].shape == (4, 28, 28)
    assert set(np.unique(data["originals"])) <= {0.0, 1.0}
    assert data["read_g_x"].shape == data["write_g_x"].shape == (3, 4)
    frames = [np.asarray(f) for f in gif_frames(tmp_path / "samples.gif")]
    assert len(frames) == 3
    colours = {tuple(c) for c in frames[-1].reshape(-1, 3)}
    assert viz.READ_COLOUR in colours and viz.WRITE_COLOUR in colours
    # Each original sits beside its reconstruction: twice the columns of a plain grid.
    assert frames[0].shape[1] == 3 * (2 * 2 * 30 + 2)
    # The read box is on the original (first cell) as well as on the canvas; the write box on the canvas only.
    first_original = frames[-1][: 3 * 32, : 3 * 32].reshape(-1, 3)
    first_colours = {tuple(c) for c in first_original}
    assert viz.READ_COLOUR in first_colours and viz.WRITE_COLOUR not in first_colours


def test_missing_checkpoint_is_one_line_and_exit_status_2(tmp_path):
    proc = run_script("sample.py", tmp_path, f"ckpt_path={tmp_path}/nope.ckpt", f"hydra.run.dir={tmp_path}/out", check=False)
    assert proc.returncode == 2
    message = f"error: ckpt_path={tmp_path}/nope.ckpt does not exist: give the path of a .ckpt that train.py wrote"
    assert proc.stderr.strip().splitlines() == [message]


def test_shipped_checkpoint_samples_without_any_path(tmp_path):
    assert PRETRAINED.stat().st_size < 10 * 2**20
    sample(sample_config("n=4"), str(tmp_path))
    canvases = np.load(tmp_path / "canvases.npz")["canvases"]
    assert canvases.shape == (64, 4, 28, 28)  # the shipped paper model draws in T=64 steps
    # A trained model's last canvas is nearly binary ink on a dark page, unlike the untrained grey.
    assert canvases[-1].mean() < 0.3 and (np.abs(canvases[-1] - 0.5) > 0.4).mean() > 0.7


@pytest.mark.parametrize("override,message", [
    ("n=0", "n=0 is not allowed: an integer >= 1"),
    ("mode=dream", "mode='dream' is not a mode: use one of prior, reconstruct"),
    ("T=-2", "T=-2 is not allowed: an integer >= 1"),
])
def test_bad_sample_settings_are_one_line(override, message, tmp_path):
    with pytest.raises(UserError, match=message):
        sample(sample_config(override), str(tmp_path))


def test_truncated_checkpoint_is_refused_by_sample(trained_run, tmp_path):
    _, run, _ = trained_run
    good = (run / "checkpoints" / "last.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(good[: len(good) // 3])
    with pytest.raises(UserError, match="is not a readable checkpoint"):
        sample(sample_config(f"ckpt_path={tmp_path}/cut.ckpt"), str(tmp_path / "out"))
