"""The posterior flows of the VAE families, each as the family table names it: f(variant, latent_dim, settings) -> Flow."""

from __future__ import annotations

from flowvae.models.flows import Flow, Identity, Planar, Sylvester, iaf, real_nvp
from flowvae.spec.settings import NetworkSettings
from flowvae.spec.variants import Variant


def diagonal(v: Variant, dim: int, s: NetworkSettings) -> Flow:
    """vae: no flow, the diagonal Gaussian itself."""
    return Identity(dim)


def planar(v: Variant, dim: int, s: NetworkSettings) -> Flow:
    """nf{k}: k amortized planar steps."""
    return Planar(dim, v.steps)


def coupling(v: Variant, dim: int, s: NetworkSettings) -> Flow:
    """rnvp{k}: k real-NVP steps of two affine couplings each."""
    return real_nvp(dim, v.steps, s.context_dim, s.coupling_hidden)


def inverse_autoregressive(v: Variant, dim: int, s: NetworkSettings) -> Flow:
    """iaf_d{depth}_w{width}[_fixed]: depth MADE steps of hidden width `width`."""
    return iaf(dim, v.steps, v.width, s.context_dim, v.fixed_sigma, s.made_layers)


def orthogonal_sylvester(v: Variant, dim: int, s: NetworkSettings) -> Flow:
    """osnf{k}_m{M}: Q with M orthonormal columns."""
    return Sylvester(dim, v.steps, "orthogonal", columns=v.width)


def householder_sylvester(v: Variant, dim: int, s: NetworkSettings) -> Flow:
    """hsnf{k}_h{H}: Q the product of H reflections."""
    return Sylvester(dim, v.steps, "householder", reflections=v.width)


def triangular_sylvester(v: Variant, dim: int, s: NetworkSettings) -> Flow:
    """tsnf{k}: Q the identity and the reversal permutation in turn."""
    return Sylvester(dim, v.steps, "triangular")
