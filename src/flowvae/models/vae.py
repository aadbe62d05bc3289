"""The VAE: encoder -> base Gaussian q0(z0|x) -> flow -> z; prior N(0, I); decoder -> p(x|z)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowvae.models.flows import Flow
from flowvae.models.contract import LatentVariableModel, VAEOutput
from flowvae.models.likelihoods import Likelihood, get_likelihood
from flowvae.models.networks import build_networks
from flowvae.spec.families import family, load
from flowvae.spec.settings import NetworkSettings
from flowvae.spec.variants import Variant

_LOG_2PI = math.log(2.0 * math.pi)


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * _LOG_2PI)


class VAE(LatentVariableModel):
    """A VAE whose posterior is a diagonal Gaussian pushed through a flow."""

    has_posterior_density = True

    def __init__(
        self,
        variant: Variant,
        settings: NetworkSettings,
        encoder: nn.Module,
        flow: Flow,
        decoder: nn.Module,
        likelihood: Likelihood,
        latent_dim: int,
        image_shape: tuple[int, int, int],
    ) -> None:
        super().__init__(variant, settings, likelihood, image_shape)
        self.encoder = encoder
        self.flow = flow
        self.decoder = decoder
        self.latent_dim = latent_dim

    def posterior(self, eps: Tensor, mu: Tensor, log_std: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """Push base noise eps (..., B, D) through q: return z and log q(z|x)."""
        z0 = mu + log_std.exp() * eps
        log_q0 = -0.5 * (eps.pow(2) + _LOG_2PI).sum(-1) - log_std.sum(-1)
        z, log_det = self.flow(z0, h)
        return z, log_q0 - log_det

    def log_q(self, z: Tensor, x: Tensor) -> Tensor:
        """log q(z|x) at given latents z (..., B, D) by inverting the flow (e.g. for density grids)."""
        mu, log_std, h = self.encoder(x)
        z0, log_det_inverse = self.flow.inverse(z, h)
        eps = (z0 - mu) * torch.exp(-log_std)
        return -0.5 * (eps.pow(2) + _LOG_2PI).sum(-1) - log_std.sum(-1) + log_det_inverse

    def forward(self, x: Tensor, n_samples: int = 1) -> VAEOutput:
        """Encode once, draw S posterior samples per image, decode all S*B in one batch."""
        mu, log_std, h = self.encoder(x)
        eps = torch.randn((n_samples, *mu.shape), dtype=mu.dtype, device=mu.device)
        z, log_qz = self.posterior(eps, mu, log_std, h)
        params = self.decoder(z.reshape(-1, self.latent_dim))
        log_px_z = self.likelihood.log_prob(params.reshape(n_samples, x.shape[0], *params.shape[1:]), x)
        return VAEOutput(log_px_z=log_px_z, log_pz=log_standard_normal(z), log_qz=log_qz, z=z, mu=mu)

    def decode_mean(self, z: Tensor) -> Tensor:
        """Mean images (n, C, H, W) in [0, 1] for latents z (n, D)."""
        return self.likelihood.mean(self.decoder(z))

    def encode_mean(self, x: Tensor) -> Tensor:
        """The posterior's latent at eps = 0 (B, D): q0's mean pushed through the flow, where the decoder was trained to
        look (q0's mean itself decodes to speckled digits under an IAF posterior)."""
        mu, log_std, h = self.encoder(x)
        return self.posterior(torch.zeros_like(mu), mu, log_std, h)[0]

    def base_mean(self, x: Tensor) -> Tensor:
        """Mean of q0, the flow's base (B, D)."""
        return self.encoder(x)[0]

    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean images decoded from one posterior sample per image."""
        return self.decode_mean(self.sample_posterior(x))

    def sample_posterior(self, x: Tensor) -> Tensor:
        """One posterior sample z (B, D) per image."""
        mu, log_std, h = self.encoder(x)
        return self.posterior(torch.randn_like(mu), mu, log_std, h)[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Mean images (n, C, H, W) decoded from prior samples."""
        p = next(self.parameters())
        device = generator.device if generator is not None else p.device
        z = torch.randn((n, self.latent_dim), generator=generator, dtype=p.dtype, device=device)
        return self.decode_mean(z.to(p.device))


def build_flow_vae(variant: Variant, settings: NetworkSettings, image_shape: tuple[int, int, int], likelihood: str) -> VAE:
    """The family table's builder of the posterior VAEs: encoder, the family's flow (its `flow` entry), decoder."""
    lik = get_likelihood(likelihood)
    flow = load(family(variant.family).flow)(variant, settings.z_dim, settings)
    encoder, decoder = build_networks(
        settings, image_shape, flow.context_size, lik.params_per_channel * image_shape[0], categorical=lik.name == "categorical"
    )
    return VAE(variant, settings, encoder, flow, decoder, lik, settings.z_dim, image_shape)
