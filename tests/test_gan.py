"""The MLP GAN of the seed assignment: template architecture, dropout at test time, noisy labels, non-saturating loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flowvae.models.build import build_variant
from flowvae.models.gan import (
    DiscriminatorMLP,
    GeneratorMLP,
    discriminator_loss,
    generator_loss,
    train_step,
)
from flowvae.spec.settings import GANSettings


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread beats two contending ones


def _linear_sizes(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_template_architecture_and_defaults():
    settings = GANSettings()
    g = GeneratorMLP(settings.latent_dim, (1, 28, 28), settings.generator_hidden)
    d = DiscriminatorMLP((1, 28, 28), settings.discriminator_hidden, settings.dropout)
    assert _linear_sizes(g) == [(100, 128), (128, 256), (256, 512), (512, 1024), (1024, 784)]
    assert [m.num_features for m in g.modules() if isinstance(m, nn.BatchNorm1d)] == [256, 512, 1024]
    assert _linear_sizes(d) == [(784, 512), (512, 256), (256, 1)]
    assert (settings.dropout, settings.label_noise) == (0.3, 0.3)
    # the family's builder makes the same networks from the settings
    model = build_variant("gan", settings, (1, 28, 28), "bernoulli")
    assert _linear_sizes(model.generator) == _linear_sizes(g) and _linear_sizes(model.discriminator) == _linear_sizes(d)
    # the architecture only: optimiser, learning rate, batch size and epochs are the profile's train block
    assert not {"lr", "betas", "batch_size", "epochs", "optimizer"} & set(vars(settings))
    for bad in ({"label_noise": 0.5}, {"dropout": 1.0}, {"generator_hidden": []}):
        with pytest.raises(ValueError):
            GANSettings.from_params(bad)


def test_shapes_and_ranges():
    torch.manual_seed(0)
    g = GeneratorMLP(latent_dim=16, image_shape=(1, 28, 28), hidden=(32, 64))
    d = DiscriminatorMLP((1, 28, 28), hidden=(32, 16))
    z = 3.0 * torch.randn(50, 16)
    x = g(z)
    assert x.shape == (50, 1, 28, 28)
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() < 0.0 < x.max()
    g.eval()
    x01 = g.mean_image(z)
    assert x01.min() >= 0.0 and x01.max() <= 1.0
    torch.testing.assert_close(x01, (g(z) + 1.0) / 2.0)
    logits = d(x)
    assert logits.shape == (50,)
    assert ((logits < 0) | (logits > 1)).any()  # logits, not sigmoid probabilities


def test_discriminator_dropout_is_active_in_eval_mode():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 8, 8)
    d = DiscriminatorMLP((1, 8, 8), hidden=(32, 16), dropout=0.3).eval()
    assert not torch.equal(d(x), d(x))
    plain = DiscriminatorMLP((1, 8, 8), hidden=(32, 16), dropout=0.0).eval()
    assert torch.equal(plain(x), plain(x))


def _targets_from_gradient(logits: torch.Tensor) -> torch.Tensor:
    """At logit 0 the gradient of the mean BCE with target t is (1/2 - t) / n, so t = 1/2 - n * gradient."""
    return 0.5 - len(logits) * logits.grad


def test_noisy_labels_lie_in_their_ranges():
    n, noise = 4000, 0.3
    real = torch.zeros(n, requires_grad=True)
    fake = torch.zeros(n, requires_grad=True)
    loss = discriminator_loss(real, fake, noise, torch.Generator().manual_seed(1))
    loss.backward()
    t_real, t_fake = _targets_from_gradient(real), _targets_from_gradient(fake)
    eps = 1e-5
    assert t_real.min() >= 1 - noise - eps and t_real.max() <= 1 + eps
    assert t_fake.min() >= -eps and t_fake.max() <= noise + eps
    # drawn per image and spread over the whole range, not a constant soft label
    assert t_real.min() < 1 - 0.95 * noise and t_real.max() > 1 - 0.05 * noise
    assert t_fake.max() > 0.95 * noise and t_fake.min() < 0.05 * noise
    assert abs(t_real.mean().item() - (1 - noise / 2)) < 0.01 and abs(t_fake.mean().item() - noise / 2) < 0.01

    g_logits = torch.zeros(n, requires_grad=True)
    generator_loss(g_logits, noise, torch.Generator().manual_seed(2)).backward()
    t_gen = _targets_from_gradient(g_logits)
    assert t_gen.min() >= 1 - noise - eps and t_gen.max() <= 1 + eps and t_gen.std() > 0.05

    exact = torch.zeros(3, requires_grad=True)
    generator_loss(exact, 0.0, None).backward()
    torch.testing.assert_close(_targets_from_gradient(exact), torch.ones(3))


def test_generator_loss_is_non_saturating():
    logits = torch.tensor([-20.0, -5.0, 0.0, 5.0], requires_grad=True)
    loss = generator_loss(logits, 0.0, None)
    torch.testing.assert_close(loss, -F.logsigmoid(logits).mean())
    loss.backward()
    assert logits.grad[0].item() < -0.99 / len(logits)  # -log D(G(z)) still pushes a confidently rejected fake
    assert (logits.grad < 0).all()  # the generator is pushed towards D(G(z)) = 1
    saturating = torch.tensor(-20.0, requires_grad=True)
    torch.log1p(-torch.sigmoid(saturating)).backward()  # the minimax term log(1 - D(G(z))) the generator minimises
    assert abs(saturating.grad.item()) < 1e-6
    assert not math.isinf(generator_loss(torch.tensor([-200.0]), 0.0, None).item())


def _two_modes(n: int, gen: torch.Generator) -> torch.Tensor:
    """8x8 images in [0, 1]: half with the top four rows lit, half with the left four columns lit, plus a little noise."""
    x = torch.zeros(n, 1, 8, 8)
    x[: n // 2, :, :4, :] = 1.0
    x[n // 2 :, :, :, :4] = 1.0
    return (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0.0, 1.0)


def _train(steps: int, update_generator: bool) -> tuple[list[dict], GeneratorMLP, torch.Tensor]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    settings = GANSettings(latent_dim=8, generator_hidden=(32, 64), discriminator_hidden=(64, 32), dropout=0.3)
    g = GeneratorMLP(settings.latent_dim, (1, 8, 8), settings.generator_hidden)
    d = DiscriminatorMLP((1, 8, 8), settings.discriminator_hidden, settings.dropout)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-3 if update_generator else 0.0, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.5, 0.999))
    data = _two_modes(512, gen)
    log = [train_step(g, d, opt_g, opt_d, data[torch.randint(0, 512, (64,), generator=gen)], settings, gen) for _ in range(steps)]
    return log, g, data


def _mode_distance(g: GeneratorMLP, data: torch.Tensor) -> float:
    """Mean squared distance of 256 generated images to the nearer of the two noise-free modes."""
    g.eval()
    with torch.no_grad():
        x = g.mean_image(torch.randn(256, g.latent_dim, generator=torch.Generator().manual_seed(9)))
    modes = torch.stack([data[:256].mean(0), data[256:].mean(0)]).round()
    return torch.cdist(x.flatten(1), modes.flatten(1)).pow(2).div(64).min(1).values.mean().item()


def test_train_steps_move_generator_towards_the_data():
    log, g, data = _train(150, update_generator=True)
    assert all(math.isfinite(v) for rec in log for v in rec.values())
    assert log[0]["d_real"] == pytest.approx(0.5, abs=0.1) and log[0]["d_fake"] == pytest.approx(0.5, abs=0.1)
    assert _mode_distance(g, data) < 0.05
    late = log[-50:]
    # a generator that keeps up leaves D far from certain
    assert sum(r["d_real"] - r["d_fake"] for r in late) / len(late) < 0.3

    frozen_log, frozen_g, _ = _train(150, update_generator=False)
    assert _mode_distance(frozen_g, data) > 0.15
    late = frozen_log[-50:]
    assert sum(r["d_real"] - r["d_fake"] for r in late) / len(late) > 0.5  # D wins against a fixed generator


def test_train_step_is_deterministic_given_the_seeds():
    first, _, _ = _train(3, update_generator=True)
    second, _, _ = _train(3, update_generator=True)
    assert first == second
