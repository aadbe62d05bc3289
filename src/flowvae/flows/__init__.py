"""Normalizing flows: each maps z (..., D) to z' and returns log|det dz'/dz| per sample."""

from flowvae.flows.autoregressive import AutoregressiveAffine
from flowvae.flows.base import Chain, Flow, Identity
from flowvae.flows.iaf import IAFStep, iaf
from flowvae.flows.made import MADE, MaskedLinear
from flowvae.flows.planar import Planar
from flowvae.flows.realnvp import AffineCoupling, real_nvp
from flowvae.flows.sylvester import Sylvester

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
    "Sylvester",
    "iaf",
    "real_nvp",
]
