"""The GPU path, where a CUDA device is present (pytest -m gpu; skipped here otherwise): a step on CUDA equals the
CPU's, compiled equals eager, bf16 stays finite and close, sampling and pictures run there, a checkpoint saved on a
GPU loads on the CPU, and DDP over two GPUs trains. With python -m draw.benchmark trainer=gpu, a few minutes.
Their shared helpers run on the CPU too."""
import json

import pytest
import torch

from conftest import TINY_RUN, run_script, sample_config
from draw.model import DRAW, DRAWConfig


def on_cuda(test):
    """A test that needs a CUDA device: marked gpu (pytest -m gpu), skipped where there is none."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")(test))


SMALL = DRAWConfig(T=4, z_size=4, enc_size=32, dec_size=32, read_init={"stride": 12, "var": 16, "gamma": 10},
                   write_init={"stride": 4, "var": 4, "gamma": 0.05}, forget_bias=1)


@pytest.fixture
def same_noise_everywhere(monkeypatch):
    """The model's noise drawn on the CPU from one seed, then moved: runs on two devices see the same numbers."""
    randn = torch.randn

    def cpu_randn(*size, device=None, dtype=None, **kwargs):
        return randn(*size, dtype=dtype).to(device)

    monkeypatch.setattr(torch, "randn", cpu_randn)
    torch.set_float32_matmul_precision("highest")  # no TF32: the comparison is of fp32 with fp32


def loss_and_grads(model: DRAW, x: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    loss = model(x).nll_bound.mean()
    loss.backward()
    return loss.detach().cpu(), {name: p.grad.detach().cpu() for name, p in model.named_parameters()}


def images(n: int = 16) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 28, 28), 0.15), generator=torch.Generator().manual_seed(1))


def assert_same_step(reference: DRAW, other: DRAW, x: torch.Tensor, x_other: torch.Tensor) -> None:
    """Two copies of one model take the same loss and gradients (fp32 tolerances) on the same images and noise."""
    other.load_state_dict(reference.state_dict())
    loss, grads = loss_and_grads(reference, x)
    loss_other, grads_other = loss_and_grads(other, x_other)
    assert loss_other == pytest.approx(loss.item(), rel=1e-4)
    for name, grad in grads.items():
        assert torch.allclose(grads_other[name], grad, rtol=1e-3, atol=1e-4), name


def test_the_comparison_runs_here_on_two_copies_on_the_cpu(same_noise_everywhere):
    """What the CUDA tests share runs where they skip: a helper that breaks would otherwise show only on a GPU."""
    x = images()
    assert x.shape == (16, 28, 28) and 0 < x.mean() < 0.3 and set(x.unique().tolist()) == {0.0, 1.0}
    torch.manual_seed(0)
    assert_same_step(DRAW(SMALL), DRAW(SMALL), x, x)


@on_cuda
def test_a_training_step_on_cuda_equals_the_cpus(same_noise_everywhere):
    torch.manual_seed(0)
    x = images()
    assert_same_step(DRAW(SMALL), DRAW(SMALL).cuda(), x, x.cuda())


@on_cuda
def test_compiled_steps_equal_eager_on_cuda(same_noise_everywhere):
    torch.manual_seed(0)
    compiled = DRAW(SMALL).cuda()
    compiled.compile_steps(2)
    x = images().cuda()
    assert_same_step(DRAW(SMALL).cuda(), compiled, x, x)


@on_cuda
def test_bf16_autocast_is_finite_and_close_to_fp32(same_noise_everywhere):
    torch.manual_seed(0)
    model = DRAW(SMALL).cuda()
    x = images().cuda()
    loss_fp32, _ = loss_and_grads(model, x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss_bf16, grads_bf16 = loss_and_grads(model, x)
    assert loss_bf16 == pytest.approx(loss_fp32.item(), rel=2e-2)
    assert all(torch.isfinite(grad).all() for grad in grads_bf16.values())


@on_cuda
def test_sampling_and_its_pictures_on_cuda(tmp_path):
    from draw.sample import sample

    out = sample(sample_config("device=cuda", "n=4", "T=8", "boxes=true"), str(tmp_path))
    assert all((out / name).is_file() for name in ("samples.png", "steps.png", "samples.gif", "canvases.npz"))


@on_cuda
def test_a_run_on_the_gpu_leaves_a_checkpoint_the_cpu_loads(tiny_mnist, tmp_path):
    from draw.module import DRAWModule

    run = tmp_path / "run"
    run_script("train.py", tmp_path, f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer=gpu", "compile=true",
               f"hydra.run.dir={run}")
    assert json.loads((run / "metrics.json").read_text())["test/nll"] > 0
    module = DRAWModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert torch.isfinite(module.model(images(4)).nll_bound).all()


@on_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over GPUs needs two")
def test_ddp_over_two_gpus_trains_and_tests(tiny_mnist, tmp_path):
    run = tmp_path / "run"
    run_script("train.py", tmp_path, f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer=ddp", "trainer.accelerator=gpu",
               "trainer.devices=2", f"hydra.run.dir={run}")
    metrics = json.loads((run / "metrics.json").read_text())
    # Global batch 20 = 2 processes x 10: 200 images are 10 steps an epoch, as in one process.
    assert metrics["steps"] == 20 and metrics["test/nll"] > 0
