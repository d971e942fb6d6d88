import pytest
import torch
from torch.distributions import Normal, kl_divergence

from draw.attention import Filterbank
from draw.model import DRAW, AttentiveRead, AttentiveWrite, DRAWConfig, gaussian_kl, iw_nll

ATTENTIONS = [(False, False), (True, False), (False, True), (True, True)]


def small_config(read_attention=True, write_attention=True, **kw) -> DRAWConfig:
    sizes = dict(T=4, z_size=6, enc_size=32, dec_size=32, read_n=3, write_n=4)
    return DRAWConfig(read_attention=read_attention, write_attention=write_attention, **{**sizes, **kw})


def fit(model: DRAW, x: torch.Tensor, steps: int, lr: float = 1e-2) -> list:
    """Adam on the negative ELBO of one fixed batch; the loss of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(x).nll_bound.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def window_params(gx=0.0, gy=0.0, log_var=0.0, log_delta=0.0, log_gamma=0.0, batch=1):
    return torch.tensor([[gx, gy, log_var, log_delta, log_gamma]]).expand(batch, -1)


@pytest.mark.parametrize("N", [1, 2, 5, 12])
def test_filter_rows_sum_to_one(N):
    torch.manual_seed(0)
    params = torch.randn(16, 5) * torch.tensor([0.5, 0.5, 1.0, 0.5, 1.0])
    _, F_x, F_y = Filterbank(N, height=20, width=28)(params)
    assert F_x.shape == (16, N, 28) and F_y.shape == (16, N, 20)
    torch.testing.assert_close(F_x.sum(-1), torch.ones(16, N))
    torch.testing.assert_close(F_y.sum(-1), torch.ones(16, N))


@pytest.mark.parametrize("N", [2, 3, 5])
def test_centred_window_is_symmetric_about_the_image_centre(N):
    # Pixel coordinates are 1..28, so the centre is 14.5 and filter i mirrors filter N+1-i about it.
    window, F_x, F_y = Filterbank(N, height=28, width=28)(window_params(log_delta=-1.0))
    assert window.g_x.item() == pytest.approx(14.5)
    torch.testing.assert_close(F_x[0], F_x[0].flip(0, 1))
    torch.testing.assert_close(F_y[0], F_x[0])
    mean_x = F_x[0] @ torch.arange(1.0, 29.0)
    torch.testing.assert_close(mean_x + mean_x.flip(0), torch.full((N,), 29.0))


def test_full_size_read_with_unit_stride_and_tiny_variance_returns_the_image():
    # N = W, delta = (28-1)/(28-1) * e^0 = 1: filter i sits on pixel i exactly.
    read = AttentiveRead(small_config(read_n=28))
    with torch.no_grad():
        read.params.weight.zero_()
        read.params.bias.copy_(window_params(log_var=-10.0)[0])
    x, x_hat = torch.rand(3, 784), torch.randn(3, 784)
    r, window = read(x, x_hat, torch.randn(3, 32))
    torch.testing.assert_close(r, torch.cat([x, x_hat], 1))
    torch.testing.assert_close(window.delta, torch.ones(3))


def test_full_size_write_with_unit_stride_and_tiny_variance_writes_the_patch():
    write = AttentiveWrite(small_config(write_n=28))
    h = torch.randn(2, 32)
    with torch.no_grad():
        write.params_and_patch.weight[:5].zero_()
        write.params_and_patch.bias[:5].copy_(window_params(log_var=-10.0, log_gamma=0.5)[0])
    update, _ = write(h)
    patch = write.params_and_patch(h)[:, 5:]
    torch.testing.assert_close(update, patch / torch.e**0.5)


def test_attention_stays_finite_for_windows_off_the_image_and_extreme_states():
    torch.manual_seed(0)
    params = torch.tensor([[50.0, -50.0, -1e4, 1e4, 1e4], [0.0, 0.0, 1e4, -1e4, -1e4]])
    _, F_x, F_y = Filterbank(5, 28, 28)(params)
    assert torch.isfinite(F_x).all() and torch.isfinite(F_y).all()
    cfg = small_config()
    read, write = AttentiveRead(cfg), AttentiveWrite(cfg)
    with torch.no_grad():
        for p in [*read.parameters(), *write.parameters()]:
            p.copy_(torch.randn_like(p) * 1e4)
    h_dec = torch.randn(8, 32).sign()  # an LSTM's h lies in [-1, 1]: its corners are the worst case
    r, _ = read(torch.rand(8, 784), torch.randn(8, 784), h_dec)
    update, _ = write(h_dec)
    assert torch.isfinite(r).all() and torch.isfinite(update).all()


def test_kl_equals_torch_distributions():
    torch.manual_seed(0)
    mu, log_sigma = torch.randn(8, 10), torch.randn(8, 10)
    expected = kl_divergence(Normal(mu, log_sigma.exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, log_sigma), expected)
    assert gaussian_kl(torch.zeros(1, 10), torch.zeros(1, 10)).item() == 0.0
    mu_p, log_sigma_p = torch.randn(8, 10), torch.randn(8, 10)  # a learned prior's
    expected = kl_divergence(Normal(mu, log_sigma.exp()), Normal(mu_p, log_sigma_p.exp())).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, log_sigma, (mu_p, log_sigma_p)), expected)
    torch.testing.assert_close(gaussian_kl(mu, log_sigma, (torch.zeros(8, 10), torch.zeros(8, 10))), gaussian_kl(mu, log_sigma))


@pytest.mark.parametrize("read_attention,write_attention", ATTENTIONS)
def test_forward_returns_loss_parts_per_image(read_attention, write_attention):
    model = DRAW(small_config(read_attention, write_attention))
    x = torch.rand(5, 28, 28).round()
    out = model(x, record=True)
    assert out.lx.shape == out.lz.shape == (5,) and out.kl_steps.shape == (5, 4)
    torch.testing.assert_close(out.lz, out.kl_steps.sum(1))
    assert (out.kl_steps >= 0).all()
    # The last recorded canvas is the one the reconstruction loss is taken on.
    lx = torch.nn.functional.binary_cross_entropy_with_logits(out.canvases[-1], x.flatten(1), reduction="none").sum(1)
    torch.testing.assert_close(out.lx, lx)
    assert len(out.canvases) == len(out.read_windows) == len(out.write_windows) == 4
    assert (out.read_windows[0] is not None) == read_attention
    assert (out.write_windows[0] is not None) == write_attention


def test_each_step_draws_fresh_noise():
    model = DRAW(small_config())
    with torch.no_grad():  # q(z|h) = N(0, 1) whatever the encoder says: z is the noise itself
        model.q.weight.zero_()
        model.q.bias.zero_()
    latents = model(torch.rand(4, 28, 28).round(), record=True).latents
    for earlier, later in zip(latents, latents[1:]):
        assert not torch.allclose(earlier, later)


@pytest.mark.parametrize("read_attention,write_attention", ATTENTIONS)
def test_loss_falls_on_a_fixed_batch(read_attention, write_attention):
    torch.manual_seed(0)
    model = DRAW(small_config(read_attention, write_attention))
    x = (torch.rand(16, 28, 28) < 0.3).float()
    losses = fit(model, x, steps=40)
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5


@pytest.mark.parametrize("write_attention", [False, True])
def test_prior_samples_are_probabilities_for_any_number_of_steps(write_attention):
    model = DRAW(small_config(write_attention=write_attention))
    canvases, windows = model.sample(7, T=9)
    assert canvases.shape == (9, 7, 28, 28) and len(windows) == 9
    assert canvases.min() >= 0 and canvases.max() <= 1


def test_reconstruction_is_closer_to_its_image_than_to_another_once_trained():
    from conftest import fake_digits

    torch.manual_seed(0)
    images = torch.from_numpy(fake_digits(64, seed=3)).float().div(255).round()
    model = DRAW(small_config(read_attention=False, write_attention=False, T=4))
    fit(model, images, steps=100)
    with torch.no_grad():
        reconstructions = torch.sigmoid(model(images, record=True).canvases[-1])
    flat = images.flatten(1)
    own = (reconstructions - flat).pow(2).sum(1)
    other = (reconstructions - flat.roll(1, dims=0)).pow(2).sum(1)
    assert own.mean() < 0.7 * other.mean()


def test_importance_weighted_bound_is_below_the_elbo_and_tightens_with_k():
    from draw.model import iw_nll, log_importance_weights

    torch.manual_seed(0)
    model = DRAW(small_config(read_attention=False, write_attention=False, T=3))
    x = (torch.rand(200, 28, 28) < 0.2).float()
    fit(model, x[:50], steps=30)  # a little training, so that q(z|x) is not the prior
    with torch.no_grad():
        out = model(x, record=True)
        elbo = out.nll_bound.mean()
        # One sample's log weight is an unbiased estimate of the ELBO
        assert -log_importance_weights(out).mean() == pytest.approx(elbo.item(), abs=0.5)
        bounds = [iw_nll(model, x, K, max_rows=256).mean() for K in (1, 10, 50)]
    assert bounds[0] == pytest.approx(elbo.item(), abs=0.5)
    assert elbo >= bounds[1] - 0.05 and bounds[0] >= bounds[1] >= bounds[2]


def test_learned_prior_starts_as_the_papers_and_then_sets_samples_and_weights():
    """model.learned_prior: at its start, N(0, I), the paper model's loss and samples from the same weights and noise;
    moved, it is what sampling draws from and what the importance weights divide by."""
    from draw.model import log_importance_weights

    torch.manual_seed(0)
    paper, learned = DRAW(small_config()), DRAW(small_config(learned_prior=True))
    assert learned.load_state_dict(paper.state_dict(), strict=False).missing_keys == ["prior.weight", "prior.bias"]
    x = (torch.rand(5, 28, 28) < 0.3).float()
    results = []
    for model in (paper, learned):
        torch.manual_seed(1)
        results.append((model(x).nll_bound, model.sample(3)[0]))
    torch.testing.assert_close(results[0], results[1])
    with torch.no_grad():  # a prior with sigma ~0 around a fixed mean: every sample the same image
        learned.prior.weight.normal_()
        learned.prior.bias[learned.cfg.z_size:].fill_(-30.0)
        samples = learned.sample(2)[0]
        torch.testing.assert_close(samples[:, 0], samples[:, 1])
        learned.prior.bias[learned.cfg.z_size:].fill_(0.3)
        out = learned(x, record=True)
    log_q_over_p = sum(Normal(mu, log_sigma.exp()).log_prob(z).sum(1) - Normal(mu_p, log_sigma_p.exp()).log_prob(z).sum(1)
                       for z, (mu, log_sigma), (mu_p, log_sigma_p) in zip(out.latents, out.posteriors, out.priors))
    torch.testing.assert_close(log_importance_weights(out), -out.lx - log_q_over_p)


def test_prior_hidden_starts_where_the_linear_prior_was_and_then_moves_the_prior():
    torch.manual_seed(0)
    linear, hidden = DRAW(small_config(learned_prior=True)), DRAW(small_config(learned_prior=True, prior_hidden=16))
    with torch.no_grad():
        linear.prior.weight.normal_(std=0.1)  # a trained linear prior, away from N(0, I)
    missing = hidden.load_state_dict(linear.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["prior_mlp.0.bias", "prior_mlp.0.weight", "prior_mlp.2.bias", "prior_mlp.2.weight"]
    h_dec = torch.randn(4, 32)
    torch.testing.assert_close(hidden.prior_params(h_dec), linear.prior_params(h_dec))
    with torch.no_grad():
        hidden.prior_mlp[-1].bias.fill_(0.5)
    mu, log_sigma = hidden.prior_params(h_dec)
    torch.testing.assert_close(mu, linear.prior_params(h_dec)[0] + 0.5)


def test_importance_weighted_bound_is_the_same_in_any_pass_size():
    from draw.model import iw_nll

    torch.manual_seed(1)
    model = DRAW(small_config(T=2))
    with torch.no_grad():
        model.canvas0.fill_(-2.0)  # a canvas that favours dark pixels: the bound depends on the image
    x = torch.stack([(torch.rand(28, 28) < density).float() for density in (0.0, 0.3, 0.6, 0.9, 0.1)])
    whole = iw_nll(model, x, K=6, max_rows=1000)
    pieces = iw_nll(model, x, K=6, max_rows=4)  # 1 image a pass, its 6 samples in passes of 4 and 2
    assert whole.shape == pieces.shape == (5,)
    # Images whose bounds differ by tens of nats each keep their own: no rows mixed up between passes.
    assert (whole - pieces).abs().max() < 1.0 < (whole[1:] - whole[:-1]).abs().min()


def reference_forward(model: DRAW, x: torch.Tensor):
    """The paper's loop written plainly, with nn.LSTMCell on the concatenated inputs and Eq. 17's full
    [x, x_hat]: what the model's merged matmuls and once-per-sequence projection must reproduce."""
    x = x.flatten(1)
    c, enc_state, dec_state = model.initial_state(len(x))
    h_dec, kl = dec_state[0], 0
    for _ in range(model.cfg.T):
        x_hat = x - torch.sigmoid(c)
        r = torch.cat([x, x_hat], 1) if not model.cfg.read_attention else model.read(x, x_hat, h_dec)[0]
        enc_state = model.encoder(torch.cat([r, h_dec], 1), enc_state)
        mu, log_sigma = model.q(enc_state[0]).chunk(2, 1)
        z = mu + log_sigma.exp() * torch.randn_like(mu)
        prior = model.prior_params(h_dec)
        dec_state = model.decoder(z, dec_state)
        h_dec = dec_state[0]
        c = c + model.write(h_dec)[0]
        kl = kl + gaussian_kl(mu, log_sigma, prior)
    return torch.nn.functional.binary_cross_entropy_with_logits(c, x, reduction="none").sum(1) + kl


# Grey MNIST, and a non-square colour image (C, H, W).
SHAPES = [(1, 28, 28), (3, 12, 20)]


@pytest.mark.parametrize("prior", [{}, {"learned_prior": True}, {"learned_prior": True, "prior_hidden": 7}],
                         ids=["paper_prior", "learned_prior", "prior_hidden"])
@pytest.mark.parametrize("shape", SHAPES, ids=["grey", "colour"])
@pytest.mark.parametrize("read_attention,write_attention", ATTENTIONS)
def test_fast_path_gives_the_reference_loss_and_gradients(read_attention, write_attention, shape, prior):
    torch.manual_seed(0)
    C, H, W = shape
    model = DRAW(small_config(read_attention, write_attention, T=5, channels=C, height=H, width=W, **prior))
    with torch.no_grad():  # biases and initial states away from zero, so that every term is exercised
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = (torch.rand(6, C, H, W) < 0.3).float()
    losses, grads = [], []
    for forward in (lambda: model(x).nll_bound, lambda: reference_forward(model, x)):
        torch.manual_seed(1)  # the same noise for both
        model.zero_grad()
        loss = forward().mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    # float32 tolerances: the two sum the same products in a different order
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-4)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("read_attention,write_attention,shape,learned_prior",
                         [(True, True, (1, 28, 28), False), (False, False, (1, 28, 28), False), (True, True, (3, 12, 20), False),
                          (True, True, (1, 28, 28), True)], ids=["attention", "none", "colour", "learned_prior"])
def test_compiled_steps_give_the_same_loss_and_gradients(read_attention, write_attention, shape, learned_prior):
    torch.manual_seed(0)
    C, H, W = shape
    model = DRAW(small_config(read_attention, write_attention, T=5, channels=C, height=H, width=W, learned_prior=learned_prior))
    if learned_prior:  # away from its N(0, I) start, so that the prior's gradients and samples are exercised
        with torch.no_grad():
            model.prior.weight.normal_(std=0.1)
    x = (torch.rand(6, C, H, W) < 0.3).float()
    results = []
    for compiled in (False, True):
        if compiled:
            model.compile_steps(steps_per_call=2)  # calls of 2, 2 and 1 steps
        torch.manual_seed(1)
        model.zero_grad()
        loss = model(x).nll_bound.mean()
        loss.backward()
        samples = model.sample(4)[0]
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, samples))
    (eager_loss, eager_grads, eager_samples), (compiled_loss, compiled_grads, compiled_samples) = results
    torch.testing.assert_close(compiled_samples, eager_samples)  # prior sampling's compiled step, same noise
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-4)
    for name in eager_grads:
        torch.testing.assert_close(compiled_grads[name], eager_grads[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("read_attention,write_attention", [(True, True), (False, False)])
def test_bf16_autocast_gives_nearly_the_fp32_loss_and_finite_gradients(read_attention, write_attention):
    """trainer.precision=bf16-mixed runs the model under bf16 autocast: the all-steps weight gradients
    (StepwiseLinear) must take its mixed dtypes, and the loss stay near fp32's."""
    torch.manual_seed(0)
    model = DRAW(small_config(read_attention, write_attention, T=4))
    x = (torch.rand(6, 28, 28) < 0.3).float()
    losses = []
    for bf16 in (False, True):
        torch.manual_seed(1)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x).nll_bound.mean()
        loss.backward()
        losses.append(loss.item())
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert losses[1] == pytest.approx(losses[0], rel=0.02)


def test_colour_read_and_write_apply_one_window_to_every_channel():
    """A colour read is the grey read of each channel under the same window; a colour write, each channel's patch
    written through that window."""
    torch.manual_seed(0)
    colour, grey = (small_config(channels=C, height=12, width=20) for C in (3, 1))
    read_c, read_g = AttentiveRead(colour), AttentiveRead(grey)
    read_g.load_state_dict(read_c.state_dict())
    x, x_hat, h = torch.rand(4, 3 * 12 * 20), torch.rand(4, 3 * 12 * 20), torch.randn(4, 32)
    glimpses, _ = read_c(x, x_hat, h)  # (B, 2*C*N*N): x's channels, then x_hat's
    per_channel = [read_g(x.view(4, 3, -1)[:, k], x_hat.view(4, 3, -1)[:, k], h)[0].view(4, 2, -1) for k in range(3)]
    expected = torch.stack(per_channel, 2).flatten(1)  # (B, 2, C, N*N) flattened
    torch.testing.assert_close(glimpses, expected)
    write = AttentiveWrite(colour)
    update, window = write(h)
    assert update.shape == (4, 3 * 12 * 20) and window.g_x.shape == (4,)


def test_colour_prior_samples_have_the_image_shape():
    model = DRAW(small_config(channels=3, height=12, width=20))
    canvases, _ = model.sample(5, T=3)
    assert canvases.shape == (3, 5, 3, 12, 20) and 0 <= canvases.min() and canvases.max() <= 1
    x = torch.rand(2, 3, 12, 20).round()
    assert torch.isfinite(iw_nll(model, x, K=3)).all()
