"""The bidirectional ResNet VAE: masked convolutions, the IAF step's log|det|, free bits, shapes, init, training."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from flowvae.models.build import build_variant, count_parameters, describe
from flowvae.models.ladder import LadderVAE, MaskedIAF, WNConv2d, autoregressive_mask
from flowvae.models.contract import VAEOutput
from flowvae.models.objectives import objective
from flowvae.spec.settings import LadderSettings

TINY = {"channels": 4, "z_channels": 2}


@pytest.fixture(autouse=True)
def seed():
    """Fix the seed of every test."""
    torch.manual_seed(0)


def images(n: int, shape: tuple[int, int, int] = (3, 32, 32)) -> torch.Tensor:
    """Smooth random 8-bit images k/255: a few colour blobs, quantised."""
    c, h, w = shape
    coarse = torch.rand(n, c, max(h // 8, 1), max(w // 8, 1))
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return torch.round(255 * (0.8 * smooth + 0.2 * torch.rand(n, c, h, w)).clamp(0, 1)) / 255


def model(name: str, shape: tuple[int, int, int] = (3, 8, 8), **settings) -> LadderVAE:
    """A tiny ladder with the discretized logistic likelihood."""
    return build_variant(name, {**TINY, **settings}, shape, "discretized_logistic")


@pytest.mark.parametrize("strict", [True, False], ids=["mask_A", "mask_B"])
def test_masked_convolution_respects_raster_order(strict: bool) -> None:
    c_in, c_out, h, w = 3, 5, 4, 4
    deg_in, deg_out = torch.arange(c_in), torch.arange(c_out) * c_in // c_out
    conv = WNConv2d(c_in, c_out, mask=autoregressive_mask(deg_in, deg_out, 3, strict)).double()
    jac = jacobian(conv, torch.randn(1, c_in, h, w, dtype=torch.float64))
    depends = (jac[0].reshape(c_out, h * w, c_in, h * w) != 0).permute(1, 0, 3, 2)  # [p, o, q, i]
    rows, cols = torch.arange(h * w) // w, torch.arange(h * w) % w
    near = ((rows[:, None] - rows[None, :]).abs() <= 1) & ((cols[:, None] - cols[None, :]).abs() <= 1)
    earlier = torch.arange(h * w)[None, :] < torch.arange(h * w)[:, None]
    same = torch.eye(h * w, dtype=torch.bool)
    centre = deg_in[None, :] < deg_out[:, None] if strict else deg_in[None, :] <= deg_out[:, None]  # [o, i]
    before = earlier[:, None, :, None] | (same[:, None, :, None] & centre[None, :, None, :])
    expected = near[:, None, :, None] & before
    assert torch.equal(depends, expected)


def iaf_jacobian(step: MaskedIAF, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """dz'/dz (D, D) of one image z (1, C, H, W), both sides flattened in raster order, channels fastest."""
    c, h, w = z.shape[1:]
    jac = jacobian(lambda t: step(t, context)[0], z)[0, :, :, :, 0]
    return jac.permute(1, 2, 0, 4, 5, 3).reshape(h * w * c, h * w * c)


def perturbed_iaf(gain: float = 8.0) -> MaskedIAF:
    """A float64 ladder IAF step with m and log sigma away from zero (far away at the default gain)."""
    step = MaskedIAF(z_channels=2, hidden=4).double()
    with torch.no_grad():
        for conv in (step.hyper.conv_in, step.hyper.conv_hidden, step.hyper.conv_out):
            conv.g.mul_(gain)
            conv.bias.normal_()
    return step


def test_iaf_step_log_det_matches_autograd_jacobian() -> None:
    step = perturbed_iaf()
    z = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    context = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    jac = iaf_jacobian(step, z, context)
    _, log_sigma = step.elementwise(z, context)
    assert torch.equal(jac.triu(1), torch.zeros_like(jac))  # autoregressive: lower triangular
    torch.testing.assert_close(jac.diagonal(), log_sigma[0].permute(1, 2, 0).reshape(-1).exp())
    sign, log_abs_det = torch.linalg.slogdet(jac)
    assert sign == 1 and log_sigma.abs().max() > 0.1
    torch.testing.assert_close(log_abs_det, log_sigma.sum())


def test_conv_iaf_is_a_flow_with_per_image_log_det_and_an_inverse() -> None:
    """The shared affine step on feature maps, float64: log|det| per image vs autograd, and inverse."""
    step = perturbed_iaf(gain=2.0)  # log sigma up to about 1: the fixed-point inverse stays finite
    z = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    context = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    z_new, log_det = step(z, context)
    assert log_det.shape == (3,) and (z_new - z).abs().max() > 0.1
    expected = [torch.linalg.slogdet(iaf_jacobian(step, z[i : i + 1], context[i : i + 1]))[1] for i in range(3)]
    torch.testing.assert_close(log_det, torch.stack(expected), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(log_det, step.elementwise(z, context)[1].sum((1, 2, 3)), atol=0, rtol=0)
    z_back, log_det_inverse = step.inverse(z_new, context)
    torch.testing.assert_close(z_back, z, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(log_det_inverse, -log_det, atol=1e-9, rtol=1e-9)


def test_log_q_is_the_density_of_the_final_latent() -> None:
    """One IAF rung in float64: log q = base log-density - log|det| of the autograd Jacobian."""
    m = build_variant("resvae_r1_iaf", {"channels": 4, "z_channels": 2}, (1, 4, 4), "bernoulli").double()
    with torch.no_grad():
        for conv in m.decoder.flows[0].modules():
            if isinstance(conv, WNConv2d):
                conv.g.mul_(8.0)
    x = (torch.rand(1, 1, 4, 4) > 0.5).double()
    eps = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    out_log_q = m.decoder([eps], m.encoder(x))[2][0].sum()
    [(q_mean, q_log_std, q_ctx)] = m.encoder(x)
    _, _, r_mean, r_log_std, ctx, _ = m.decoder.rungs[0].features(m.decoder.start(1))
    mean, std = q_mean + r_mean, (q_log_std + r_log_std).exp()
    z0 = mean + std * eps
    base = torch.distributions.Normal(mean, std).log_prob(z0).sum()
    log_det = torch.linalg.slogdet(iaf_jacobian(m.decoder.flows[0], z0, ctx + q_ctx))[1]
    torch.testing.assert_close(out_log_q, base - log_det)


def test_free_bits_floor_in_the_objective_but_true_kl_in_the_elbo() -> None:
    m = model("resvae_r3_iaf").double()  # float64: the loss minus the -ELBO is a small difference of large sums
    x = images(8, (3, 8, 8)).double()
    m.initialize(x)
    out = m(x, n_samples=2)
    per_group = out.kl_groups.mean((0, 1))
    floor = per_group.median().item()
    below = per_group < floor
    assert below.any() and (~below).any()
    loss = objective(out, "elbo", beta=1.0, free_bits=floor)
    recon, kl = -out.log_px_z, out.log_qz - out.log_pz
    torch.testing.assert_close(loss.neg_elbo, (recon + kl).mean())
    torch.testing.assert_close(loss.kl, kl.mean())
    torch.testing.assert_close(loss.loss, recon.mean() + per_group.clamp_min(floor).sum())
    assert (loss.loss - loss.neg_elbo).item() == pytest.approx((floor - per_group[below]).sum().item(), rel=1e-4)
    kl_grad = torch.autograd.grad(loss.loss, out.kl_groups, retain_graph=True)[0]
    assert torch.all(kl_grad[..., below] == 0) and torch.all(kl_grad[..., ~below] > 0)
    torch.testing.assert_close(objective(out, "elbo").loss, loss.neg_elbo)


@pytest.mark.parametrize("posterior", ["gauss", "iaf"])
def test_kl_groups_sum_to_log_q_minus_log_p(posterior: str) -> None:
    m = model(f"resvae_r4_{posterior}").double()
    out = m(images(3, (3, 8, 8)).double(), n_samples=5)
    assert out.kl_groups.shape == (5, 3, 4 * TINY["z_channels"])
    torch.testing.assert_close(out.kl_groups.sum(-1), out.log_qz - out.log_pz)


def test_bits_per_dim_is_nats_over_3072_ln2() -> None:
    m = model("resvae_r2_gauss", (3, 32, 32))
    x = images(4)
    m.initialize(x)
    torch.manual_seed(1)
    out = m(x, n_samples=1)
    torch.manual_seed(1)
    params = m.decoder(m._noise(4), m.encoder(x))[0].double()
    mu, s = params[:, :3], params[:, 3:].exp()
    cdf = lambda t: torch.sigmoid((t - mu) / s)  # noqa: E731
    upper = torch.where(x == 1, torch.ones_like(mu), cdf(x.double() + 0.5 / 255))
    lower = torch.where(x == 0, torch.zeros_like(mu), cdf(x.double() - 0.5 / 255))
    bits = -torch.log2(upper - lower).sum((1, 2, 3)) / 3072
    torch.testing.assert_close(-out.log_px_z[0].double() / (3072 * math.log(2)), bits, rtol=1e-4, atol=1e-4)
    neg_elbo_bpd = (-(out.log_px_z + out.log_pz - out.log_qz)).mean() / (3 * 32 * 32 * math.log(2))
    assert 0 < neg_elbo_bpd < 12


@pytest.mark.parametrize(
    "rungs, posterior, stages", [(1, "iaf", 1), (2, "gauss", 2), (5, "iaf", 2), (20, "gauss", 1), (20, "iaf", 2)]
)
def test_shapes_for_1_to_20_rungs(rungs: int, posterior: str, stages: int) -> None:
    m = build_variant(f"resvae_r{rungs}_{posterior}", {"channels": 4, "z_channels": 1, "stages": stages},
                    (3, 8, 8), "discretized_logistic")
    calls = []
    m.encoder.register_forward_hook(lambda *_: calls.append(1))
    x = images(2, (3, 8, 8))
    out = m(x, n_samples=3)
    assert isinstance(out, VAEOutput) and len(calls) == 1
    assert out.log_px_z.shape == out.log_pz.shape == out.log_qz.shape == (3, 2)
    high = rungs - rungs // 2 if stages == 2 else rungs  # rungs at 4x4; the rest at 2x2
    assert m.latent_dim == 16 * high + 4 * (rungs - high)
    assert out.z.shape == (3, 2, m.latent_dim) and out.mu.shape == (2, m.latent_dim)
    assert out.kl_groups.shape == (3, 2, rungs)
    assert torch.isfinite(out.log_px_z + out.log_pz - out.log_qz).all()
    samples = m.sample(2, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 3, 8, 8) and 0 <= samples.min() and samples.max() <= 1
    assert m.decode_mean(m.encode_mean(x)).shape == (2, 3, 8, 8)


def test_decode_mean_feeds_the_given_latents() -> None:
    m = model("resvae_r3_iaf")
    x = images(2, (3, 8, 8))
    torch.manual_seed(3)
    out = m(x, n_samples=1)
    torch.manual_seed(3)
    torch.testing.assert_close(m.decode_mean(out.z[0]), m.reconstruct(x))
    a = m.sample(2, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, m.sample(2, generator=torch.Generator().manual_seed(5)))


def test_data_dependent_init_normalises_every_pre_activation() -> None:
    m = model("resvae_r3_iaf", channels=8, z_channels=2, stages=2)
    x = images(16, (3, 8, 8))
    convs = {name: mod for name, mod in m.named_modules() if isinstance(mod, WNConv2d)}
    torch.manual_seed(1)
    m.initialize(x)
    outputs = {}
    for name, conv in convs.items():
        conv.register_forward_hook(lambda mod, inp, out, name=name: outputs.__setitem__(name, out.detach()))
    torch.manual_seed(1)
    m(x, n_samples=1)
    unit = 0
    for name, out in outputs.items():
        mean, std = out.mean((0, 2, 3)), out.std((0, 2, 3), unbiased=False)
        if name == "decoder.rungs.2.conv1":  # reads the constant h_top
            assert out.abs().max() < 1e-6
            continue
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
        torch.testing.assert_close(std, convs[name].init_scale, atol=1e-3, rtol=1e-3)
        unit += int((convs[name].init_scale == 1).sum())
    assert len(outputs) == len(convs) and unit > 100
    assert -6 < m.decoder.log_scale.item() < 0


def test_training_steps_lower_the_loss() -> None:
    torch.set_num_threads(1)
    m = model("resvae_r2_iaf", (3, 32, 32), channels=8)
    x = images(16)
    m.initialize(x)
    optimizer = torch.optim.Adamax(m.parameters(), lr=2e-3)

    def loss() -> torch.Tensor:
        return objective(m(x), "elbo", free_bits=0.1).loss

    torch.manual_seed(1)
    with torch.no_grad():
        before = loss().item()
    for _ in range(12):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    torch.manual_seed(1)
    with torch.no_grad():
        after = loss().item()
    assert after < before - 0.01 * abs(before)


def test_describe_lists_every_part() -> None:
    m = model("resvae_r2_iaf")
    text = describe(m)
    total = count_parameters(m)
    assert "model: resvae_r2_iaf" in text and f"total: {total:,}" in text
    assert [name for name, _ in m.named_children()] == ["encoder", "decoder"]
    for part in ("encoder", "decoder"):
        assert f"  {part}: {count_parameters(getattr(m, part)):,}" in text
    assert count_parameters(m.encoder) + count_parameters(m.decoder) == total
    assert "  decoder.flows.1: MaskedIAF(" in text and count_parameters(m.decoder.flows) > 0
    assert len(model("resvae_r2_gauss").decoder.flows) == 0


def test_settings_defaults_and_errors() -> None:
    m = build_variant("resvae_r1_gauss", {}, (3, 32, 32), "discretized_logistic")
    assert m.settings == LadderSettings() and m.latent_dim == 32 * 16 * 16
    assert m.free_bits == LadderSettings().free_bits and model("resvae_r1_gauss", free_bits=0.5).free_bits == 0.5
    with pytest.raises(ValueError, match="chanels"):
        build_variant("resvae_r1_gauss", {"chanels": 4}, (3, 8, 8), "discretized_logistic")
    with pytest.raises(ValueError, match="z_channels"):
        build_variant("resvae_r1_gauss", {"z_channels": 0}, (3, 8, 8), "discretized_logistic")
    with pytest.raises(ValueError, match="divisible"):
        build_variant("resvae_r2_gauss", {**TINY, "stages": 2}, (3, 6, 6), "discretized_logistic")
