import json
import subprocess
import sys
from collections import namedtuple

import pytest
import torch

from conftest import ROOT
from draw.benchmark import PROFILE_GROUPS, profile_shares
from draw.export import export
from draw.sample import load_module

FIELDS = {"config", "train_images_per_s", "ceiling_images_per_s", "share_of_ceiling", "sample_images_per_s", "sample_64_s",
          "step_ms_median", "compile_s", "peak_rss_mb", "precision", "device", "torch", "threads"}


@pytest.mark.parametrize("data", ["mnist", "cifar10"])
def test_benchmark_prints_one_json_line_per_configuration(data):
    overrides = [f"data={data}", "model.T=2", "model.enc_size=16", "model.dec_size=16", "model.z_size=4", "data.batch_size=8",
                 "compile=false"]
    proc = subprocess.run([sys.executable, "-m", "draw.benchmark", *overrides], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(line)
    assert set(result) == FIELDS
    assert result["config"] == " ".join(overrides) and result["precision"] == "32-true" and result["device"] == "cpu"
    assert result["train_images_per_s"] > 0 and result["peak_rss_mb"] > 0
    # The ceiling is the step's own matmuls alone: a step cannot be faster (a margin for the machine's noise).
    assert result["ceiling_images_per_s"] > 0 and 0 < result["share_of_ceiling"] < 1.5


@pytest.mark.parametrize("overrides", [
    ["model.T=2", "model.enc_size=16", "model.dec_size=16", "model.z_size=4", "data.batch_size=8", "compile=false"],
    ["task=classify", "model.glimpses=2", "model.read_n=4", "model.hidden_size=8", "data.batch_size=8"],
])
def test_benchmark_profile_says_where_a_steps_time_goes(overrides):
    proc = subprocess.run([sys.executable, "-m", "draw.benchmark", "--profile", *overrides], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert json.loads(line)["config"] == " ".join(overrides)  # the flag is not an override
    assert "Self CPU time total" in proc.stderr and "aten::" in proc.stderr and "gpuGetDeviceCount" not in proc.stderr
    (kinds,) = [line for line in proc.stderr.splitlines() if line.startswith("own time by kind: ")]
    shares = [float(part.rsplit(" ", 1)[1].rstrip("%")) for part in kinds.removeprefix("own time by kind: ").split("; ")]
    assert len(shares) == len(PROFILE_GROUPS) + 1 and abs(sum(shares) - 100) < 0.5 and shares[0] > 0  # some addmm/mm


def test_profile_shares_sum_each_kind_of_op():
    Event = namedtuple("Event", "key self_cpu_time_total")
    events = [Event("aten::addmm", 50.0), Event("aten::mm", 10.0), Event("graph_0_cpp_fused_sigmoid_tanh_3", 20.0),
              Event("aten::bmm", 5.0), Event("## Call CompiledFxGraph fi6b7shn", 5.0), Event("aten::empty", 10.0)]
    shares = profile_shares(events)
    assert shares["matmuls (addmm, mm)"] == pytest.approx(0.6)
    assert shares["fused element-wise kernels"] == pytest.approx(0.2)
    assert shares["batched matmuls (bmm)"] == shares["compiled graphs' calls"] == pytest.approx(0.05)
    assert shares["the rest"] == pytest.approx(0.1) and shares["the optimizer"] == 0


def test_export_keeps_what_sampling_needs(trained_run, tmp_path):
    _, run, _ = trained_run
    src, dst = run / "checkpoints" / "last.ckpt", tmp_path / "small.ckpt"
    export(src, dst)
    assert dst.stat().st_size < src.stat().st_size
    module, mode, _ = load_module(dst)
    assert module.model.cfg.T == 3 and mode == "prior"


def test_export_half_halves_the_weights_and_loads_them_as_float32(trained_run, tmp_path):
    _, run, _ = trained_run
    src = run / "checkpoints" / "last.ckpt"
    export(src, tmp_path / "full.ckpt")
    export(src, tmp_path / "half.ckpt", half=True)
    full = torch.load(tmp_path / "full.ckpt", weights_only=True)["state_dict"]
    half = torch.load(tmp_path / "half.ckpt", weights_only=True)["state_dict"]
    assert all(weight.dtype == torch.float16 for weight in half.values())
    assert sum(w.nbytes for w in half.values()) * 2 == sum(w.nbytes for w in full.values())
    module, _, _ = load_module(tmp_path / "half.ckpt")
    for name, weight in module.state_dict().items():
        assert weight.dtype == torch.float32
        torch.testing.assert_close(weight, full[name], rtol=1e-3, atol=1e-4)


def test_benchmark_of_a_classifier_times_its_steps_and_its_data():
    overrides = ["task=classify", "model.glimpses=2", "model.read_n=4", "model.hidden_size=8", "data.batch_size=8"]
    proc = subprocess.run([sys.executable, "-m", "draw.benchmark", *overrides], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["config"] == " ".join(overrides)
    assert result["train_images_per_s"] > 0 and result["data_ms_per_batch"] > 0 and result["step_ms_median"] > 0


@pytest.mark.parametrize("attention,per_step,per_sequence", [
    # the merged LSTM gates (4 x 256 by [read 2*2*2, h_dec, h_enc] and by [z, h_dec]), q, the read's and write's maps
    ("read_write", [(1024, 8 + 256 + 256), (1024, 100 + 256), (200, 256), (5, 256), (5 + 25, 256)], []),
    # without attention the image's projection runs once a sequence; each step reads the error image alone
    ("none", [(1024, 784 + 256 + 256), (1024, 100 + 256), (200, 256), (784, 256)], [(1024, 784)]),
])
def test_the_ceiling_counts_the_paper_models_matmuls(attention, per_step, per_sequence):
    from draw.benchmark import unavoidable_matmuls
    from draw.run import build_module, compose_config

    model = build_module(compose_config([f"attention={attention}"])).model
    assert unavoidable_matmuls(model) == (per_step, per_sequence)
