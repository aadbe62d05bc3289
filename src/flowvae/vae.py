"""The VAE: encoder -> base Gaussian q0(z0|x) -> flow -> z; prior N(0, I); decoder -> p(x|z)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from flowvae.flows import Flow, Identity, Planar, iaf, real_nvp
from flowvae.likelihoods import Likelihood, get_likelihood
from flowvae.networks import build_networks, net_settings
from flowvae.variants import Variant, parse_variant

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class VAEOutput:
    """Per-sample terms of one forward pass; sample dimension first."""

    log_px_z: Tensor  # (S, B) log p(x|z), summed over pixels
    log_pz: Tensor  # (S, B) log prior density of the final latent
    log_qz: Tensor  # (S, B) base log-density minus the summed log|det|
    z: Tensor  # (S, B, D) final latent
    mu: Tensor  # (B, D) mean of the base posterior q0
    kl_groups: Tensor | None = None  # (S, B, G) ladder only


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * _LOG_2PI)


class VAE(nn.Module):
    """A VAE whose posterior is a diagonal Gaussian pushed through a flow."""

    def __init__(
        self,
        encoder: nn.Module,
        flow: Flow,
        decoder: nn.Module,
        likelihood: Likelihood,
        latent_dim: int,
        image_shape: tuple[int, int, int],
        variant: Variant | None = None,
        net: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.variant = variant
        self.net = net
        self.encoder = encoder
        self.flow = flow
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)

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
        """Mean of q0 (B, D)."""
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


def build_flow(v: Variant, dim: int, context_dim: int, coupling_hidden: int) -> Flow:
    """The posterior flow of variant v over a `dim`-dimensional latent."""
    if v.family == "vae":
        return Identity(dim)
    if v.family == "nf":
        return Planar(dim, v.steps)
    if v.family == "rnvp":
        return real_nvp(dim, v.steps, context_dim, coupling_hidden)
    if v.family == "iaf":
        return iaf(dim, v.steps, v.width, context_dim, v.fixed_sigma)
    raise ValueError(f"no flow for family {v.family!r}")


def build_model(
    variant: str | Variant, net: dict[str, Any], image_shape: tuple[int, int, int], likelihood: str
) -> nn.Module:
    """The model named `variant` with network settings `net` for images of shape (C, H, W)."""
    v = parse_variant(variant) if isinstance(variant, str) else variant
    if v.family == "resvae":
        from flowvae.ladder import build_ladder

        return build_ladder(v, net, image_shape, likelihood)
    s = net_settings(net)
    lik = get_likelihood(likelihood)
    flow = build_flow(v, s["z_dim"], s["context_dim"], s["coupling_hidden"])
    encoder, decoder = build_networks(s, image_shape, flow.context_size, lik.params_per_channel * image_shape[0])
    return VAE(encoder, flow, decoder, lik, s["z_dim"], image_shape, variant=v, net=s)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _own_parameters(module: nn.Module) -> int:
    """Parameters held by this module itself, its weight-norm parametrisation included."""
    own = sum(p.numel() for p in module.parameters(recurse=False))
    if parametrize.is_parametrized(module):
        own += sum(p.numel() for p in module.parametrizations.parameters())
    return own


def describe(model: nn.Module) -> str:
    """Architecture (every layer with its parameter count) and totals per part."""
    name = getattr(getattr(model, "variant", None), "name", type(model).__name__)
    lines = [f"model: {name}"]
    if getattr(model, "net", None) is not None:
        lines.append(f"net: {model.net}")
    if hasattr(model, "likelihood"):
        lines.append(f"likelihood: {getattr(model.likelihood, 'name', model.likelihood)}")
    for part, module in model.named_children():
        lines.append(f"\n[{part}] {type(module).__name__}({module.extra_repr()})")
        for layer_name, layer in module.named_modules():
            if "parametrizations" in layer_name.split("."):
                continue
            n = _own_parameters(layer)
            if n or (isinstance(layer, Flow) and layer is not module):
                label = f"{type(layer).__name__}({layer.extra_repr()})"
                path = f"{part}.{layer_name}" if layer_name else part
                lines.append(f"  {path}: {label}" + (f"  {n:,}" if n else ""))
    lines.append("\nparameters:")
    for part, module in model.named_children():
        lines.append(f"  {part}: {count_parameters(module):,}")
    lines.append(f"  total: {count_parameters(model):,}")
    return "\n".join(lines)
