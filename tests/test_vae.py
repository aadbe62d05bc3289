"""The VAE: posterior densities integrate to one, model building, forward shapes, describe()."""

from __future__ import annotations

import pytest
import torch

from flowvae.models.build import build_variant, count_parameters, describe
from flowvae.models.contract import VAEOutput
from flowvae.models.vae import VAE
from flowvae.spec.variants import GRAMMAR

FAMILIES = ["vae", "nf4", "rnvp2", "iaf_d2_w16", "iaf_d2_w16_fixed", "osnf2_m1", "osnf2_m2", "hsnf2_h2", "tsnf3"]
TINY = {"kind": "mlp", "hidden": 16, "layers": 1, "z_dim": 2, "context_dim": 3, "coupling_hidden": 16}


@pytest.fixture(autouse=True)
def seed():
    """Fix the seed of every test."""
    torch.manual_seed(0)


def perturbed_2d_model(name: str) -> VAE:
    """A float64 model with a 2-D latent, random flow parameters and a q0 of moderate spread.

    The encoder head sets q0's mean, log-std and the context h (planar u, w, b) to random
    values of order one; every flow parameter is moved away from its initial value.
    """
    model = build_variant(name, TINY, (1, 4, 4), "bernoulli").double()
    with torch.no_grad():
        model.encoder.head.weight.mul_(0.1)
        bias = model.encoder.head.bias
        bias.copy_(torch.randn_like(bias))
        bias[2:4].mul_(0.3)
        for p in model.flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def shoelace(corners: torch.Tensor) -> torch.Tensor:
    """Areas of the quadrilaterals spanned by a (G+1, G+1, 2) grid of mapped corners."""
    quad = [corners[:-1, :-1], corners[1:, :-1], corners[1:, 1:], corners[:-1, 1:]]
    twice = sum(a[..., 0] * b[..., 1] - b[..., 0] * a[..., 1] for a, b in zip(quad, quad[1:] + quad[:1]))
    return 0.5 * twice.abs()


def integrate_posterior(model: VAE, x: torch.Tensor, cells: int = 400, half_width: float = 7.0, wrong: float = 0.0):
    """Integral of exp(log q(z|x)) over z, as a sum over the mapped cells of a grid in base-noise space.

    Each cell of an eps grid is pushed through q; its image is weighed by its geometric
    (shoelace) area and the density at the image of its centre. `wrong` adds that multiple
    of the flow's log|det| to log q, to show that the check can fail.
    """
    mu, log_std, h = model.encoder(x)
    edges = torch.linspace(-half_width, half_width, cells + 1, dtype=torch.float64)
    centres = 0.5 * (edges[1:] + edges[:-1])
    corner_eps = torch.stack(torch.meshgrid(edges, edges, indexing="ij"), -1).reshape(-1, 1, 2)
    centre_eps = torch.stack(torch.meshgrid(centres, centres, indexing="ij"), -1).reshape(-1, 1, 2)
    corners, _ = model.posterior(corner_eps, mu, log_std, h)
    z, log_q = model.posterior(centre_eps, mu, log_std, h)
    if wrong:
        log_q = log_q + wrong * model.flow(mu + log_std.exp() * centre_eps, h)[1]
    area = shoelace(corners.view(cells + 1, cells + 1, 2))
    return (log_q.view(cells, cells).exp() * area).sum().item()


@pytest.mark.parametrize("name", FAMILIES)
def test_posterior_density_integrates_to_one(name: str) -> None:
    model = perturbed_2d_model(name)
    x = (torch.rand(1, 1, 4, 4) > 0.5).double()
    with torch.no_grad():
        assert abs(integrate_posterior(model, x) - 1.0) < 1e-3
        if name != "vae":
            mu, log_std, h = model.encoder(x)
            eps = torch.randn(500, 1, 2, dtype=torch.float64)
            z0 = mu + log_std.exp() * eps
            z, ladj = model.flow(z0, h)
            assert (z - z0).abs().max() > 0.1, "the flow barely moves z: the check would be weak"
            if "fixed" not in name:
                assert abs(integrate_posterior(model, x, cells=100, wrong=0.5) - 1.0) > 1e-2


@pytest.mark.parametrize("name", FAMILIES)
def test_log_q_by_inversion_matches_forward(name: str) -> None:
    model = perturbed_2d_model(name)
    x = (torch.rand(3, 1, 4, 4) > 0.5).double()
    with torch.no_grad():
        out = model(x, n_samples=5)
        torch.testing.assert_close(model.log_q(out.z, x), out.log_qz, atol=1e-8, rtol=1e-8)


def test_diagonal_posterior_is_the_base_gaussian() -> None:
    model = perturbed_2d_model("vae")
    x = (torch.rand(3, 1, 4, 4) > 0.5).double()
    out = model(x, n_samples=4)
    mu, log_std, _ = model.encoder(x)
    expected = torch.distributions.Normal(mu, log_std.exp()).log_prob(out.z).sum(-1)
    torch.testing.assert_close(out.log_qz, expected)
    torch.testing.assert_close(out.log_pz, torch.distributions.Normal(0.0, 1.0).log_prob(out.z).sum(-1))


@pytest.mark.parametrize("name", ["vae", "nf4", "rnvp2", "iaf_d2_w320", "iaf_d2_w320_fixed", "osnf2_m4", "hsnf2_h3", "tsnf2"])
def test_build_model_and_forward(name: str) -> None:
    net = {"kind": "mlp", "hidden": 32, "layers": 2, "z_dim": 8, "context_dim": 16}
    model = build_variant(name, net, (1, 28, 28), "bernoulli")
    x = (torch.rand(3, 1, 28, 28) > 0.5).float()
    calls = {"encoder": 0, "decoder": 0}
    model.encoder.register_forward_hook(lambda *_: calls.__setitem__("encoder", calls["encoder"] + 1))
    model.decoder.register_forward_hook(lambda *_: calls.__setitem__("decoder", calls["decoder"] + 1))
    out = model(x, n_samples=4)
    assert isinstance(out, VAEOutput) and calls == {"encoder": 1, "decoder": 1}
    assert out.log_px_z.shape == out.log_pz.shape == out.log_qz.shape == (4, 3)
    assert out.z.shape == (4, 3, 8) and out.mu.shape == (3, 8) and out.kl_groups is None
    assert torch.isfinite(out.log_px_z + out.log_pz - out.log_qz).all()
    (out.log_px_z + out.log_pz - out.log_qz).mean().backward()
    assert model.latent_dim == 8
    assert model.reconstruct(x).shape == (3, 1, 28, 28)
    assert model.encode_mean(x).shape == (3, 8)
    images = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert images.shape == (5, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert model.decode_mean(torch.zeros(2, 8)).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("name", ["vae", "iaf_d2_w16", "rnvp2"])
def test_the_representative_latent_is_the_base_mean_through_the_flow(name: str) -> None:
    """Interpolations decode encode_mean: for a flow posterior that is q0's mean pushed through the flow (eps = 0), not
    q0's mean, which the decoder never sees."""
    model = perturbed_2d_model(name)
    x = (torch.rand(3, 1, 4, 4, dtype=torch.float64) > 0.5).double()
    mu, log_std, h = model.encoder(x)
    assert torch.equal(model.base_mean(x), mu)
    assert torch.allclose(model.encode_mean(x), model.flow(mu, h)[0])
    moved = (model.encode_mean(x) - mu).abs().max().item()
    assert (moved == 0) == (name == "vae")


def test_resnet_model_on_cifar_shapes() -> None:
    net = {"kind": "resnet", "z_dim": 8, "context_dim": 8}
    model = build_variant("iaf_d1_w32", net, (3, 32, 32), "discretized_logistic")
    out = model(torch.randint(0, 256, (2, 3, 32, 32)) / 255, n_samples=3)
    assert out.log_px_z.shape == (3, 2) and torch.isfinite(out.log_px_z).all()


@pytest.mark.parametrize("name", ["vae2", "nf0", "iaf_d2", "rnvp", "planar4", ""])
def test_malformed_name_raises_with_grammar(name: str) -> None:
    with pytest.raises(ValueError) as err:
        build_variant(name, TINY, (1, 4, 4), "bernoulli")
    assert GRAMMAR in str(err.value)


def test_unknown_net_key_is_named() -> None:
    with pytest.raises(ValueError, match="widht"):
        build_variant("vae", {"kind": "mlp", "widht": 3}, (1, 4, 4), "bernoulli")


def test_describe_reports_parameter_counts() -> None:
    model = build_variant("iaf_d2_w320", TINY, (1, 28, 28), "bernoulli")
    text = describe(model)
    total = count_parameters(model)
    assert text.startswith("model: iaf_d2_w320\n") and "likelihood: bernoulli" in text
    assert f"settings: {model.settings}" in text and f"total: {total:,}" in text
    parts = ("encoder", "flow", "decoder")
    for part in parts:
        assert f"  {part}: {count_parameters(getattr(model, part)):,}" in text
    assert sum(count_parameters(getattr(model, part)) for part in parts) == total
    out = model.flow.steps[1].hyper.made.out
    n_out = out.weight.numel() + out.bias.numel()
    assert f"  flow.steps.1.hyper.made.out: MaskedLinear({out.extra_repr()})  {n_out:,}\n" in text
