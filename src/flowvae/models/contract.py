"""The contract every trainable model keeps: what train, evaluate, bench and the figures rely on.

Both the diagonal/flow VAE (vae.py) and the bidirectional ResNet VAE (ladder.py) subclass
`LatentVariableModel`; callers use these members and nothing else (no attribute probing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowvae.models.likelihoods import Likelihood
from flowvae.spec.settings import ModelSettings
from flowvae.spec.variants import Variant


@dataclass
class VAEOutput:
    """Per-sample terms of one forward pass; sample dimension first."""

    log_px_z: Tensor  # (S, B) log p(x|z), summed over pixels
    log_pz: Tensor  # (S, B) log prior density of the final latent
    log_qz: Tensor  # (S, B) base log-density minus the summed log|det|
    z: Tensor  # (S, B, D) final latent
    mu: Tensor  # (B, D) mean of the base posterior q0
    kl_groups: Tensor | None = None  # (S, B, G) KL per free-bits group; None where free bits do not apply


class LatentVariableModel(nn.Module):
    """A VAE over images of `image_shape` with a `latent_dim`-dimensional latent.

    `decoder` is the module that runs on all S*B posterior samples of a forward pass with S samples
    (and on every prior sample). Outside `initialize` the model calls nothing on it but itself, so
    inference speed-ups (compilation, bfloat16; see inference.py) can replace it by a wrapper.
    """

    variant: Variant
    settings: ModelSettings  # the network, ladder or pixel-flow settings the model was built from
    likelihood: Likelihood
    image_shape: tuple[int, int, int]
    latent_dim: int
    encoder: nn.Module
    decoder: nn.Module
    free_bits: float = 0.0  # nats per KL group below which the training objective ignores the KL
    has_posterior_density: bool = False  # whether log_q(z, x) can be evaluated at arbitrary z
    # A flow used as a density model: forward's log_px_z is the exact log p(x) of each sample (a
    # dequantization), log_pz and log_qz are zero, and there is no encoder or decoder.
    exact_likelihood: bool = False

    def __init__(
        self, variant: Variant, settings: ModelSettings, likelihood: Likelihood, image_shape: tuple[int, int, int]
    ) -> None:
        super().__init__()
        self.variant = variant
        self.settings = settings
        self.likelihood = likelihood
        self.image_shape = tuple(image_shape)

    def forward(self, x: Tensor, n_samples: int = 1) -> VAEOutput:
        """Encode x (B, C, H, W) once, draw n_samples posterior samples per image, decode them."""
        raise NotImplementedError

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent initialisation from a first batch; nothing by default."""

    def decode_mean(self, z: Tensor) -> Tensor:
        """Mean images (n, C, H, W) in [0, 1] for latents z (n, latent_dim)."""
        raise NotImplementedError

    def encode_mean(self, x: Tensor) -> Tensor:
        """A representative latent (B, latent_dim) per image: the posterior's base mean pushed through its flow."""
        raise NotImplementedError

    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean images decoded from one posterior sample per image."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Mean images (n, C, H, W) decoded from prior samples."""
        raise NotImplementedError

    def log_q(self, z: Tensor, x: Tensor) -> Tensor:
        """log q(z|x) at given latents z (..., B, D); only where has_posterior_density is True."""
        raise NotImplementedError(f"{type(self).__name__} has no tractable posterior density at arbitrary z")
