"""Training objectives: the ELBO with k samples, the IWAE bound (Burda et al. 2016), free bits."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flowvae.models.contract import VAEOutput


@dataclass
class Loss:
    """A loss to minimise plus the per-image terms to log (nats, batch means)."""

    loss: Tensor
    neg_elbo: Tensor
    recon: Tensor
    kl: Tensor


def log_weights(out: VAEOutput) -> Tensor:
    """log p(x, z) - log q(z|x) per sample, shape (S, B)."""
    return out.log_px_z + out.log_pz - out.log_qz


def free_bits_kl(kl_groups: Tensor, floor: float) -> Tensor:
    """KL summed over groups, each group's batch-mean KL clamped below at `floor` nats.

    kl_groups has shape (S, B, G); the result (a scalar per image, averaged over the batch)
    never counts a group's KL below the floor, which keeps every group in use early on.
    """
    per_group = kl_groups.mean(dim=(0, 1))
    return torch.clamp(per_group, min=floor).sum()


def objective(out: VAEOutput, kind: str = "elbo", beta: float = 1.0, free_bits: float = 0.0) -> Loss:
    """The training loss for an ELBO or IWAE objective over the S samples in `out`.

    beta scales the KL term (warm-up). With free bits > 0 and per-group KLs in `out`, the ELBO's
    KL term is the free-bits KL; the logged -ELBO always uses the true KL.
    """
    recon = -out.log_px_z
    kl = out.log_qz - out.log_pz
    neg_elbo = (recon + kl).mean()
    if kind == "iwae":
        log_w = out.log_px_z - beta * kl
        n = log_w.shape[0]
        loss = -(torch.logsumexp(log_w, dim=0) - math.log(n)).mean()
    elif kind == "elbo":
        kl_term = kl.mean()
        if free_bits > 0 and out.kl_groups is not None:
            kl_term = free_bits_kl(out.kl_groups, free_bits)
        loss = recon.mean() + beta * kl_term
    else:
        raise ValueError(f"objective must be elbo or iwae, not {kind!r}")
    return Loss(loss=loss, neg_elbo=neg_elbo.detach(), recon=recon.mean().detach(), kl=kl.mean().detach())
