"""Models from resolved runs through the family table, and their description."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from flowvae.models.contract import LatentVariableModel
from flowvae.models.flows import Flow
from flowvae.spec.families import family, load
from flowvae.spec.run import RunSpec, model_settings
from flowvae.spec.settings import ModelSettings
from flowvae.spec.variants import Variant, parse_variant


def build_model(spec: RunSpec) -> LatentVariableModel:
    """The model of a resolved run."""
    return build_variant(spec.variant, spec.network, spec.image_shape, spec.likelihood)


def build_variant(
    variant: str | Variant, settings: ModelSettings | dict[str, Any], image_shape: tuple[int, int, int], likelihood: str
) -> LatentVariableModel:
    """The model named `variant` from its family's settings (typed, or a params block to type) for images (C, H, W)."""
    v = parse_variant(variant) if isinstance(variant, str) else variant
    fam = family(v.family)
    if isinstance(settings, dict):
        settings = model_settings(fam, settings)
    return load(fam.builder)(v, settings, tuple(image_shape), likelihood)


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
