"""Training and sampling speed, measured the same way by users and by us:

    python -m draw.benchmark [train.py overrides ...]      # e.g. attention=none model.T=64 data.batch_size=100
    python -m draw.benchmark --profile [overrides ...]     # and where a step's time goes, op by op (stderr)

Times whole training steps (forward, backward, gradient clipping, Adam) on synthetic binary images after
warm-up, and prior sampling of 64 images, and prints one JSON line per configuration. With no overrides
it runs the paper's attention and no-attention models. For a classifier (task=classify, e.g.
experiment=paper_cluttered_8glimpses) it times training steps on cluttered images and, beside them, making
a batch of those images (data_ms_per_batch), which must stay well below a step. Medians over repeated
steps; speed is never a pass/fail test.

Beside DRAW's speed it prints the ceiling this machine sets for it, measured in the same process just before the
model: the matmuls a training step cannot avoid at this configuration's shapes and batch (ceiling_images_per_s),
and the share of it the step reaches (share_of_ceiling). Shares, unlike images per second, compare across hours
on a machine whose speed moves.
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch._inductor.config as inductor_config
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig

from draw.config import validate_train_config
from draw.data.cluttered import cluttered_images
from draw.errors import exit_on_user_error, exit_with_help_if_asked
from draw.model import DRAW, merged_lstm_weights
from draw.module import build_optimizer
from draw.run import build_module, compose_config, prepare_device

PAPER_CONFIGS = [["experiment=paper_mnist_attention"], ["experiment=paper_mnist_noattention"]]


def device_of(cfg: DictConfig) -> str:
    wants_gpu = cfg.trainer.accelerator in ("gpu", "cuda") or (cfg.trainer.accelerator == "auto" and torch.cuda.is_available())
    return "cuda" if wants_gpu else "cpu"


def median_seconds(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def optimizer_step(loss: torch.Tensor, model: torch.nn.Module, optimizer, clip) -> None:
    """What a training step does after the forward pass: backward, clipping at norm `clip` (None: none), Adam."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip or float("inf"))
    optimizer.step()


def unavoidable_matmuls(model: DRAW) -> tuple:
    """The weight shapes (out, in) a training step multiplies by: at every step both LSTMs' gate weights (input and
    recurrent merged, as DRAW.forward runs them), the posterior's projection and the read's and write's own linear
    maps; once a sequence, without attention, the encoder's projection of the image itself."""
    w_enc, _ = merged_lstm_weights(model.encoder, skip=model.read.fixed_size)
    w_dec, _ = merged_lstm_weights(model.decoder)
    linears = [m.weight for part in (model.q, model.read, model.write) for m in part.modules() if isinstance(m, nn.Linear)]
    per_step = [tuple(w.shape) for w in (w_enc, w_dec, *linears)]
    fixed = model.read.fixed_size
    return per_step, [(model.encoder.weight_ih.shape[0], fixed)] if fixed else []


def ceiling_seconds(model: DRAW, batch: int, device: str, repeats: int = 5) -> float:
    """The least time a training step's matmuls take here: forward and input gradient at each of T steps, weight
    gradients once over all T * batch rows (as StepwiseLinear takes the LSTMs'), the image's projection once."""
    T = model.cfg.T
    per_step, per_sequence = unavoidable_matmuls(model)
    new = lambda *shape: torch.randn(*shape, device=device)  # noqa: E731 -- operands: only their shapes matter
    steps = [(new(batch, i), new(o, i), new(batch, o), new(o, T * batch), new(T * batch, i)) for o, i in per_step]
    once = [(new(batch, i), new(o, i), new(o, batch)) for o, i in per_sequence]

    def matmuls():
        for _ in range(T):
            for x, w, grad, _, _ in steps:
                x @ w.T  # forward
                grad @ w  # the input's gradient
        for _, _, _, grads, inputs in steps:
            grads @ inputs  # the weight's gradient, all steps at once
        for x, w, grad in once:
            x @ w.T
            grad @ x

    matmuls()  # warm-up
    return median_seconds(matmuls, repeats, device)


# What a step's own time goes to, by the profiler's op names (the first group whose prefix a name has).
PROFILE_GROUPS = {
    "matmuls (addmm, mm)": ("aten::addmm", "aten::mm"),
    "batched matmuls (bmm)": ("aten::bmm",),
    "fused element-wise kernels": ("cpp_fused", "graph_", "triton_"),  # inductor's kernels (CPU: graph_N_cpp_fused_...)
    "cat": ("aten::cat",),
    "compiled graphs' calls": ("CompiledFunction", "## Call CompiledFxGraph", "Torch-Compiled Region", "TorchDynamo"),
    "the optimizer": ("Optimizer.", "aten::_foreach"),
}


def profile_shares(events) -> dict:
    """Each group's share of the profiled own (self) CPU time, and "the rest"; from profile().key_averages()."""
    shares = dict.fromkeys([*PROFILE_GROUPS, "the rest"], 0.0)
    for event in events:
        group = next((g for g, prefixes in PROFILE_GROUPS.items() if event.key.startswith(prefixes)), "the rest")
        shares[group] += event.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    return {group: time / total for group, time in shares.items()}


def print_profile(train_step, steps: int = 3, rows: int = 30) -> None:
    """torch.profiler over a few training steps: the ops (and, compiled on a CPU, each fused kernel) by own time,
    then those summed by kind."""
    from torch.profiler import profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # not the profiler's "gpuGetDeviceCount failed" on a CPU
    with profile() as prof:
        for _ in range(steps):
            train_step()
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=70), file=sys.stderr)
    shares = profile_shares(events)
    print("own time by kind: " + "; ".join(f"{group} {share:.1%}" for group, share in shares.items()), file=sys.stderr)


def benchmark(cfg: DictConfig, overrides=(), steps: int = 10, warmup: int = 3, sample_n: int = 64,
              profile: bool = False) -> dict:
    validate_train_config(cfg)
    prepare_device(cfg)
    torch.manual_seed(cfg.seed)
    device = device_of(cfg)
    precision = str(cfg.trainer.precision)
    module = build_module(cfg).to(device)
    if cfg.compile:
        if profile:
            inductor_config.cpp.enable_kernel_profile = True  # each fused kernel by name in the profile
        module.model.compile_steps(cfg.compile_steps_per_call)
    model, optimizer = module.model, build_optimizer(module.parameters(), module.hparams.optim)
    batch = cfg.data.batch_size
    if cfg.task.name == "classify":
        return benchmark_classifier(cfg, overrides, module, optimizer, device, steps, warmup, profile)
    x = torch.bernoulli(torch.full((batch, cfg.model.channels, cfg.model.height, cfg.model.width), 0.13, device=device))

    def autocast():
        return torch.autocast(device, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))

    def train_step():
        with autocast():
            loss = model(x).nll_bound.mean()
        optimizer_step(loss, model, optimizer, cfg.trainer.gradient_clip_val)

    def sample():
        with autocast(), torch.no_grad():
            model.sample(sample_n)

    ceiling_s = ceiling_seconds(model, batch, device)
    first_step_s = median_seconds(train_step, 1, device)
    median_seconds(train_step, warmup, device)
    step_s = median_seconds(train_step, steps, device)
    if profile:
        print_profile(train_step)
    median_seconds(sample, 1, device)
    sample_s = median_seconds(sample, max(3, steps), device)
    return {
        "config": " ".join(overrides),
        "train_images_per_s": round(batch / step_s, 1),
        "ceiling_images_per_s": round(batch / ceiling_s, 1),
        "share_of_ceiling": round(ceiling_s / step_s, 3),
        "sample_images_per_s": round(sample_n / sample_s, 1),
        "sample_64_s": round(sample_s * 64 / sample_n, 4),
        "step_ms_median": round(step_s * 1e3, 1),
        "compile_s": round(first_step_s - step_s, 1) if cfg.compile else 0.0,
        **machine(precision, device),
    }


def machine(precision: str, device: str) -> dict:
    return {
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "precision": precision,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def benchmark_classifier(cfg: DictConfig, overrides, module, optimizer, device: str, steps: int, warmup: int,
                         profile: bool = False) -> dict:
    """Training steps of a classifier on cluttered images, and making a batch of them from MNIST-sized digits."""
    d = cfg.data
    digits = (torch.rand(1000, 28, 28) < 0.15).to(torch.uint8) * 255  # stand-ins: the cost does not depend on the strokes
    settings = dict(size=d.size, distractors=d.distractors, distractor_size=d.distractor_size)

    def make_batch():
        return cluttered_images(digits[: d.batch_size], digits, **settings).float() / 255

    x, y = make_batch().to(device), torch.randint(0, 10, (d.batch_size,), device=device)

    def train_step():
        optimizer_step(F.cross_entropy(module.model(x).logits, y), module.model, optimizer, cfg.trainer.gradient_clip_val)

    median_seconds(train_step, warmup, device)
    step_s = median_seconds(train_step, steps, device)
    if profile:
        print_profile(train_step)
    data_s = median_seconds(make_batch, max(3, steps), "cpu")
    return {
        "config": " ".join(overrides),
        "train_images_per_s": round(d.batch_size / step_s, 1),
        "step_ms_median": round(step_s * 1e3, 1),
        "data_ms_per_batch": round(data_s * 1e3, 2),
        **machine(str(cfg.trainer.precision), device),
    }


@exit_on_user_error
def main(argv) -> None:
    exit_with_help_if_asked(argv, __doc__)
    profile = "--profile" in argv
    argv = [arg for arg in argv if arg != "--profile"]
    if not argv:  # each configuration in a process of its own, so that peak memory is its own
        for overrides in PAPER_CONFIGS:
            subprocess.run([sys.executable, "-m", "draw.benchmark", *(["--profile"] if profile else []), *overrides], check=True)
        return
    print(json.dumps(benchmark(compose_config(argv), argv, profile=profile)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
