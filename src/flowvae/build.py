"""Models from variant names and settings, and their description: the one place that knows both kinds."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from flowvae.flows import Flow, Identity, Planar, Sylvester, iaf, real_nvp
from flowvae.ladder import LadderVAE, ladder_settings
from flowvae.likelihoods import get_likelihood
from flowvae.model import LatentVariableModel
from flowvae.networks import build_networks, net_settings
from flowvae.pixelflow import RealNVPDensity
from flowvae.vae import VAE
from flowvae.variants import Variant, parse_variant


def build_flow(v: Variant, dim: int, settings: dict[str, Any]) -> Flow:
    """The posterior flow of variant v over a `dim`-dimensional latent, sized by the network settings."""
    if v.family == "vae":
        return Identity(dim)
    if v.family == "nf":
        return Planar(dim, v.steps)
    if v.family == "rnvp":
        return real_nvp(dim, v.steps, settings["context_dim"], settings["coupling_hidden"])
    if v.family == "iaf":
        return iaf(dim, v.steps, v.width, settings["context_dim"], v.fixed_sigma, settings["made_layers"])
    if v.family == "osnf":
        return Sylvester(dim, v.steps, "orthogonal", columns=v.width)
    if v.family == "hsnf":
        return Sylvester(dim, v.steps, "householder", reflections=v.width)
    if v.family == "tsnf":
        return Sylvester(dim, v.steps, "triangular")
    raise ValueError(f"no flow for family {v.family!r}")


def build_model(
    variant: str | Variant, net: dict[str, Any], image_shape: tuple[int, int, int], likelihood: str
) -> LatentVariableModel:
    """The model named `variant` with network (for resvae: ladder; for realnvp: pixel_flow) settings `net` for images (C, H, W)."""
    v = parse_variant(variant) if isinstance(variant, str) else variant
    if v.family == "resvae":
        return LadderVAE(v, ladder_settings(net), tuple(image_shape), likelihood)
    if v.family == "realnvp":
        if not get_likelihood(likelihood).eight_bit:
            raise ValueError(f"{v.name} models 8-bit images (a data set with an 8-bit likelihood), not {likelihood} data")
        return RealNVPDensity(v, net, tuple(image_shape))
    s = net_settings(net)
    lik = get_likelihood(likelihood)
    flow = build_flow(v, s["z_dim"], s)
    encoder, decoder = build_networks(
        s, image_shape, flow.context_size, lik.params_per_channel * image_shape[0], categorical=lik.name == "categorical"
    )
    return VAE(v, s, encoder, flow, decoder, lik, s["z_dim"], image_shape)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _own_parameters(module: nn.Module) -> int:
    """Parameters held by this module itself, its weight-norm parametrisation included."""
    own = sum(p.numel() for p in module.parameters(recurse=False))
    if parametrize.is_parametrized(module):
        own += sum(p.numel() for p in module.parametrizations.parameters())
    return own


def describe(model: LatentVariableModel) -> str:
    """Architecture (every layer with its parameter count) and totals per part."""
    lines = [f"model: {model.variant.name}", f"settings: {model.settings}", f"likelihood: {model.likelihood.name}"]
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
