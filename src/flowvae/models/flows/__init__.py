"""Normalizing flows: each maps z (..., D) to z' and returns log|det dz'/dz| per sample."""

from flowvae.models.flows.autoregressive import AutoregressiveAffine
from flowvae.models.flows.base import Chain, Flow, Identity
from flowvae.models.flows.iaf import IAFStep, iaf
from flowvae.models.flows.made import MADE, MaskedLinear
from flowvae.models.flows.planar import Planar
from flowvae.models.flows.realnvp import AffineCoupling, RealNVP, real_nvp
from flowvae.models.flows.sylvester import Sylvester

__all__ = [
    "MADE",
    "AffineCoupling",
    "AutoregressiveAffine",
    "Chain",
    "Flow",
    "IAFStep",
    "Identity",
    "MaskedLinear",
    "Planar",
    "RealNVP",
    "Sylvester",
    "iaf",
    "real_nvp",
]
