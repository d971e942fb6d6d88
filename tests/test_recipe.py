"""The training recipe's knobs: the windows' starting place, the optimizer, the lr schedule, KL warm-up, training a part alone."""
import json

import pytest
import torch
from pytorch_lightning import Trainer

from conftest import TINY_RUN, compose_config, run_script, tiny_module
from draw.config import check_same_settings
from draw.data import MNISTDataModule
from draw.errors import UserError
from draw.model import DRAW, DRAWConfig
from draw.module import DRAWModule, build_optimizer, lr_schedule, train_only
from draw.run import build_module


@pytest.mark.parametrize("N", [2, 5])
def test_windows_start_where_the_config_says(N):
    cfg = DRAWConfig(T=2, z_size=4, enc_size=8, dec_size=8, read_n=N, write_n=N,
                     read_init={"stride": 9.0, "var": 16.0}, write_init={"stride": 4.0, "var": None})
    model = DRAW(cfg)
    h_dec = torch.zeros(3, 8)  # the window then comes from the biases alone
    read, _, _ = model.read.filterbank(model.read.params(h_dec))
    write, _, _ = model.write.filterbank(model.write.params_and_patch(h_dec)[:, :5])
    assert torch.allclose(read.delta, torch.tensor(9.0)) and torch.allclose(read.var, torch.tensor(16.0))
    assert torch.allclose(write.delta, torch.tensor(4.0))
    # var: null leaves nn.Linear's start, a variance near 1 (a bias in +-1/sqrt(8)).
    assert 0.6 < write.var.mean() < 1.5
    # Left alone, the grid spans the image: delta near (28 - 1) / (N - 1).
    default = DRAW(DRAWConfig(T=2, z_size=4, enc_size=8, dec_size=8, read_n=N))
    delta = default.read.filterbank(default.read.params(h_dec))[0].delta
    assert 0.6 < float(delta.detach().mean()) / (27 / (N - 1)) < 1.5


def test_window_init_composes_into_the_model():
    module = build_module(compose_config("attention.read_init.stride=8", "attention.read_init.var=12"))
    window = module.model.read.filterbank(module.model.read.params(torch.zeros(1, 256)))[0]
    assert torch.allclose(window.delta, torch.tensor(8.0)) and torch.allclose(window.var, torch.tensor(12.0))


@pytest.mark.parametrize("sizes,lstms", [
    (("model.T=2", "model.z_size=4", "model.enc_size=8", "model.dec_size=8"), lambda model: (model.encoder, model.decoder)),
    (("task=classify", "model.hidden_size=8", "model.read_n=4"), lambda model: (model.lstm,)),
], ids=["draw", "classifier"])
def test_forget_bias_starts_every_lstms_forget_gate_there_and_nothing_else(sizes, lstms):
    torch.manual_seed(0)
    plain = build_module(compose_config(*sizes, "model.forget_bias=null")).model
    torch.manual_seed(0)
    model = build_module(compose_config(*sizes, "model.forget_bias=1.0")).model
    for cell, before in zip(lstms(model), lstms(plain)):
        bias, bias_before = cell.bias_ih + cell.bias_hh, before.bias_ih + before.bias_hh  # (4H,): gates i, f, g, o
        assert torch.equal(bias[8:16], torch.ones(8)) and not torch.equal(bias_before[8:16], torch.ones(8))
        assert torch.equal(bias[:8], bias_before[:8]) and torch.equal(bias[16:], bias_before[16:])
        assert torch.equal(cell.weight_ih, before.weight_ih) and torch.equal(cell.weight_hh, before.weight_hh)


def test_checkpoint_from_before_window_init_resumes():
    """A checkpoint whose hyper-parameters predate read_init and write_init means their default (null: nn.Linear's start)."""
    cfg = compose_config("attention.read_init={stride:null,var:null,gamma:null}", "attention.write_init={stride:null,var:null,gamma:null}")
    saved = {k: v for k, v in build_module(cfg).hparams.model.items() if k not in ("read_init", "write_init")}
    check_same_settings({"hyper_parameters": {"model": saved}}, cfg, "old.ckpt")  # no error


@pytest.mark.parametrize("optim,kind,decay", [("adam", torch.optim.Adam, 0.0), ("adamw", torch.optim.AdamW, 1e-2)])
def test_optim_group_builds_its_optimizer(optim, kind, decay):
    cfg = compose_config(f"optim={optim}", "optim.lr=3e-4")
    optimizer = build_optimizer(torch.nn.Linear(2, 2).parameters(), build_module(cfg).hparams.optim)
    assert type(optimizer) is kind
    group = optimizer.param_groups[0]
    assert group["lr"] == 3e-4 and group["weight_decay"] == decay and isinstance(group["betas"], tuple)


def test_optim_without_target_is_adam():
    """Checkpoints written before the optim group held Adam's lr and betas alone."""
    optimizer = build_optimizer(torch.nn.Linear(2, 2).parameters(), {"lr": 1e-3, "betas": [0.5, 0.999]})
    assert type(optimizer) is torch.optim.Adam and optimizer.param_groups[0]["betas"] == (0.5, 0.999)


def lrs_over(scheduler: str, steps: int, *overrides) -> list:
    """The lr at each of `steps` optimizer steps under scheduler=NAME (optim.lr 1e-3)."""
    cfg = compose_config(f"scheduler={scheduler}", "optim.lr=1e-3", *overrides)
    optimizer = build_optimizer(torch.nn.Linear(2, 2).parameters(), build_module(cfg).hparams.optim)
    schedule = lr_schedule(optimizer, dict(cfg.scheduler), steps)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if schedule:
            schedule["scheduler"].step()
    return lrs


def test_schedules_change_the_lr_as_configured():
    assert lrs_over("none", 10) == [1e-3] * 10
    cosine = lrs_over("cosine", 101, "scheduler.min_lr_ratio=0.1")
    assert cosine[0] == pytest.approx(1e-3) and cosine[50] == pytest.approx(0.55e-3) and cosine[100] == pytest.approx(1e-4)
    warm = lrs_over("warmup_cosine", 120, "scheduler.warmup_steps=20")
    assert warm[0] == pytest.approx(1e-3 / 20) and warm[19] == pytest.approx(1e-3) and max(warm) == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(warm[:19], warm[1:20])) and all(a >= b for a, b in zip(warm[20:], warm[21:]))
    onecycle = lrs_over("onecycle", 100)
    assert max(onecycle) == pytest.approx(1e-3) and onecycle[0] == pytest.approx(1e-3 / 25)
    assert onecycle.index(max(onecycle)) == pytest.approx(30, abs=1) and onecycle[-1] < 1e-6


def test_plateau_halves_the_lr_when_val_nll_stops_falling():
    cfg = compose_config("scheduler=plateau", "scheduler.patience=1")
    optimizer = build_optimizer(torch.nn.Linear(2, 2).parameters(), build_module(cfg).hparams.optim)
    schedule = lr_schedule(optimizer, dict(cfg.scheduler), 100)
    assert schedule["monitor"] == "val/nll" and schedule["interval"] == "epoch"
    for val_nll in (100.0, 90.0, 95.0, 96.0):
        schedule["scheduler"].step(val_nll)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optim.lr / 2)


def test_kl_warmup_trains_on_a_part_of_the_kl_weight_but_reports_the_elbo(tiny_mnist, tmp_path):
    module = DRAWModule(model=tiny_module().hparams.model, optim={"lr": 1e-3},
                        scheduler={"name": "cosine", "warmup_steps": 0, "min_lr_ratio": 0.1},
                        kl_warmup_steps=100, kl_weight=2.0)
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(module, MNISTDataModule(data_dir=str(tiny_mnist), batch_size=20, val_size=40))
    m = trainer.callback_metrics
    assert trainer.global_step == 10 and m["train/kl_weight"] == pytest.approx(2.0 * 10 / 100)
    assert float(m["train/loss"]) == pytest.approx(float(m["train/lx"] + m["train/lz"]), rel=1e-6)
    # the cosine schedule ran to its end over the run's 10 steps
    assert float(m["train/lr"]) == pytest.approx(1e-4)


def test_train_only_moves_the_named_parameters_alone(tiny_mnist, tmp_path):
    module = DRAWModule(model={**tiny_module().hparams.model, "learned_prior": True}, optim={"lr": 1e-2})
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    assert train_only(module, ["model.prior"]) == module.model.prior.weight.numel() + module.model.prior.bias.numel()
    trainer = Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(module, MNISTDataModule(data_dir=str(tiny_mnist), batch_size=20, val_size=40))
    moved = {name for name, p in module.named_parameters() if not torch.equal(p, before[name])}
    assert moved == {"model.prior.weight", "model.prior.bias"}
    assert len(trainer.optimizers[0].param_groups[0]["params"]) == 2
    with pytest.raises(UserError, match="names no parameter.*model.encoder"):
        train_only(module, ["model.enc"])  # a name's whole parts only


def test_paper_recipe_trains_with_its_cosine_schedule_over_the_runs_epochs(tiny_mnist, tmp_path):
    """The paper experiments' lr falls from optim.lr to 0 over trainer.max_epochs, whatever that is."""
    from conftest import TINY_RUN, run_script

    run_script("train.py", tmp_path, "experiment=paper_mnist_attention", f"data.data_dir={tiny_mnist}", *TINY_RUN,
               "compile=false", f"hydra.run.dir={tmp_path}/run")
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    # The experiment saves every 100 steps; the 20-step run's last.ckpt is still its last epoch's end.
    assert checkpoint["global_step"] == 20
    assert checkpoint["hyper_parameters"]["scheduler"]["name"] == "cosine"
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("decay", [0.0, 0.9])
def test_ema_callback_checkpoints_the_average_and_tests_the_elbo(decay, tiny_mnist, tmp_path):
    """+callbacks=ema: the checkpoints' weights are the average (decay 0: the last weights themselves), the raw
    weights ride along for resuming, and test/nll stays the true bound Lx + Lz."""
    run = tmp_path / "run"
    run_script("train.py", tmp_path, f"data.data_dir={tiny_mnist}", *TINY_RUN, "+callbacks=ema", f"callbacks.ema.decay={decay}",
               f"hydra.run.dir={run}")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    average, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    same = all(torch.equal(average[k], raw[k]) for k in raw)
    assert same == (decay == 0.0)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/nll"] == pytest.approx(metrics["test/lx"] + metrics["test/lz"], rel=1e-5)
