"""The MLP GAN of the seed assignment 004_03d37b577c6a1cf6.txt (UvA Deep Learning 2019, assignment 3, section 2).

The networks follow the course template `a3_gan_template.py`: the generator maps z (100-d) through dense layers of
128, 256, 512 and 1024 units, LeakyReLU(0.2) after each and batch norm on all but the first, to 784 pixels with
Tanh; the discriminator maps 784 pixels through 512 and 256 units with LeakyReLU(0.2) to one output. The seed
(line 165) adds three tricks from ganhacks (https://github.com/soumith/ganhacks, seed footnote at line 171):
z ~ N(0, I); the non-saturating generator loss, maximise log D(G(z)) instead of minimising log(1 - D(G(z)))
(line 161, Goodfellow et al. 2014); noisy labels for both players. It also puts dropout in the discriminator,
active in training and testing (line 165).

Images are [0, 1] outside this module and [-1, 1] inside it (the template normalises MNIST with mean and std 0.5).
The template's final Sigmoid is folded into the losses: the discriminator returns logits, and the binary cross
entropies are computed from them (log-sigmoid), which stays finite when D saturates.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowvae.spec.settings import GANSettings
from flowvae.spec.variants import Variant

_SLOPE = 0.2  # LeakyReLU negative slope, template


class GeneratorMLP(nn.Module):
    """z -> image in [-1, 1]: Linear + LeakyReLU, then Linear + BatchNorm + LeakyReLU per further width, Linear + Tanh."""

    def __init__(
        self,
        latent_dim: int = 100,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        hidden: tuple[int, ...] = (128, 256, 512, 1024),
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)
        layers: list[nn.Module] = [nn.Linear(latent_dim, hidden[0]), nn.LeakyReLU(_SLOPE)]
        for n_in, n_out in pairwise(hidden):
            layers += [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.LeakyReLU(_SLOPE)]
        # The template's comment says "Linear 1024 -> 768"; an MNIST image has 784 pixels.
        layers += [nn.Linear(hidden[-1], math.prod(self.image_shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(z.shape[0], *self.image_shape)

    def mean_image(self, z: Tensor) -> Tensor:
        """The generated images mapped to [0, 1]."""
        return (self.forward(z) + 1.0) / 2.0


class DiscriminatorMLP(nn.Module):
    """Image in [-1, 1] -> logit of "real": Linear + LeakyReLU + dropout per hidden width, then Linear to 1.

    The template ends in a Sigmoid; here it is folded into the losses (BCE with logits) for numerical stability,
    so apply torch.sigmoid where a probability is wanted. Dropout follows each hidden LeakyReLU and is applied in
    eval mode too (seed line 165: "both during training and testing"); its masks come from torch's global RNG.
    """

    def __init__(
        self, image_shape: tuple[int, int, int] = (1, 28, 28), hidden: tuple[int, ...] = (512, 256), dropout: float = 0.3
    ):
        super().__init__()
        self.dropout = dropout
        widths = (math.prod(image_shape), *hidden)
        self.hidden = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in pairwise(widths))
        self.out = nn.Linear(widths[-1], 1)

    def forward(self, x: Tensor) -> Tensor:
        h = x.flatten(1)
        for layer in self.hidden:
            h = F.dropout(F.leaky_relu(layer(h), _SLOPE), self.dropout, training=True)
        return self.out(h).squeeze(1)


def _uniform_targets(logits: Tensor, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape, generator=generator, device=device, dtype=logits.dtype).to(logits.device)
    return low + (high - low) * u


def discriminator_loss(
    d_real_logits: Tensor, d_fake_logits: Tensor, label_noise: float, generator: torch.Generator | None
) -> Tensor:
    """BCE of D with noisy labels: mean over real images plus mean over generated ones.

    "Noisy labels" (seed 004_03d37b577c6a1cf6.txt line 165, after ganhacks trick 6 "use soft and noisy labels"):
    every image gets its own target, drawn afresh at each call, uniform in [1 - label_noise, 1] for a real image and
    uniform in [0, label_noise] for a generated one. ganhacks draws real targets in [0.7, 1.2]; they are capped at 1
    here, since a BCE target above 1 rewards ever larger logits. ganhacks's occasional label flips are not used.
    `generator` is the torch.Generator the targets are drawn from.
    """
    real_targets = _uniform_targets(d_real_logits, 1.0 - label_noise, 1.0, generator)
    fake_targets = _uniform_targets(d_fake_logits, 0.0, label_noise, generator)
    return F.binary_cross_entropy_with_logits(d_real_logits, real_targets) + F.binary_cross_entropy_with_logits(
        d_fake_logits, fake_targets
    )


def generator_loss(d_fake_logits: Tensor, label_noise: float, generator: torch.Generator | None) -> Tensor:
    """Non-saturating generator loss -log D(G(z)) (seed line 161), with the same noisy real targets as D's.

    With target t in [1 - label_noise, 1] it is the BCE -t log D - (1 - t) log(1 - D); t = 1 gives -log D(G(z)).
    Its gradient with respect to the logit, D - t, stays near -t where D rejects the fakes confidently, whereas
    that of log(1 - D(G(z))) vanishes there.
    """
    targets = _uniform_targets(d_fake_logits, 1.0 - label_noise, 1.0, generator)
    return F.binary_cross_entropy_with_logits(d_fake_logits, targets)


def train_step(
    generator: GeneratorMLP,
    discriminator: DiscriminatorMLP,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    x_real01: Tensor,
    settings: GANSettings,
    torch_generator: torch.Generator | None,
) -> dict[str, float]:
    """One discriminator step, then one generator step, on a batch of images in [0, 1].

    z ~ N(0, I) and the noisy labels are drawn from `torch_generator`. The generator step scores the same fakes
    with the updated discriminator. Returns the two losses and D's mean probabilities of "real" on the real and the
    generated images of the discriminator step.
    """
    generator.train()
    discriminator.train()
    x_real = x_real01.to(torch.float32) * 2.0 - 1.0
    device = torch_generator.device if torch_generator is not None else x_real.device
    z = torch.randn(x_real.shape[0], generator.latent_dim, generator=torch_generator, device=device).to(x_real.device)
    fake = generator(z)

    opt_d.zero_grad(set_to_none=True)
    real_logits = discriminator(x_real)
    fake_logits = discriminator(fake.detach())
    d_loss = discriminator_loss(real_logits, fake_logits, settings.label_noise, torch_generator)
    d_loss.backward()
    opt_d.step()

    opt_g.zero_grad(set_to_none=True)
    g_loss = generator_loss(discriminator(fake), settings.label_noise, torch_generator)
    g_loss.backward()
    opt_g.step()

    return {
        "d_loss": d_loss.item(),
        "g_loss": g_loss.item(),
        "d_real": torch.sigmoid(real_logits).mean().item(),
        "d_fake": torch.sigmoid(fake_logits).mean().item(),
    }


class GAN(nn.Module):
    """The generator and the discriminator of one run; model.safetensors holds both (keys generator.*, discriminator.*)."""

    def __init__(self, variant: Variant, settings: GANSettings, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.variant = variant
        self.settings = settings
        self.image_shape = tuple(image_shape)
        self.latent_dim = settings.latent_dim
        self.generator = GeneratorMLP(settings.latent_dim, self.image_shape, tuple(settings.generator_hidden))
        self.discriminator = DiscriminatorMLP(self.image_shape, tuple(settings.discriminator_hidden), settings.dropout)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n generated images in [0, 1] (the generator in eval mode: batch norm with its running statistics)."""
        was_training = self.generator.training
        self.generator.eval()
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=generator.device if generator is not None else device)
        images = self.generator.mean_image(z.to(device))
        self.generator.train(was_training)
        return images


def build_gan(variant: Variant, settings: GANSettings, image_shape: tuple[int, int, int], likelihood: str) -> GAN:
    """The family table's builder of `gan`; the data set's likelihood plays no part (the GAN has none)."""
    return GAN(variant, settings, image_shape)
