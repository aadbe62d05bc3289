"""Inverse autoregressive flow (Kingma et al. 2016) with MADE steps (see made.py).

Learnt sigma: (m, s) = MADE(z, h), sigma = sigmoid(s), z' = sigma*z + (1 - sigma)*m,
log|det| = sum log sigma; the bias of s starts at +1.5 so sigma starts near 0.82.
Fixed sigma: z' = z + m, log|det| = 0 (volume preserving).
The order of the dimensions is reversed between consecutive steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowvae.models.flows.autoregressive import AutoregressiveAffine
from flowvae.models.flows.base import Chain
from flowvae.models.flows.made import MADE

SIGMA_BIAS = 1.5


class GatedShift(nn.Module):
    """(shift, log_scale) of an IAF step from its MADE: ((1 - sigma) m, log sigma), or (m, 0) with sigma fixed."""

    def __init__(self, made: MADE, fixed_sigma: bool) -> None:
        super().__init__()
        self.made = made
        self.fixed_sigma = fixed_sigma

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Elementwise shift and log-scale for z."""
        out = self.made(z, context)
        if self.fixed_sigma:
            return out, torch.zeros_like(out)
        m, s = out.chunk(2, dim=-1)
        return torch.sigmoid(-s) * m, F.logsigmoid(s)


class IAFStep(AutoregressiveAffine):
    """One IAF step with a MADE of width `hidden` and `layers` hidden layers."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        context_size: int,
        fixed_sigma: bool = False,
        reverse: bool = False,
        layers: int = 1,
    ) -> None:
        order = torch.arange(dim).flip(0) if reverse else torch.arange(dim)
        made = MADE(dim, hidden, context_size, order, outputs_per_dim=1 if fixed_sigma else 2, layers=layers)
        super().__init__(GatedShift(made, fixed_sigma), dim, context_size)
        self.fixed_sigma = fixed_sigma
        self.reverse = reverse
        if not fixed_sigma:
            with torch.no_grad():
                made.out.bias[dim:].fill_(SIGMA_BIAS)

    def extra_repr(self) -> str:
        """Settings, for printing."""
        return (
            f"dim={self.dim}, context_size={self.context_size}, "
            f"fixed_sigma={self.fixed_sigma}, reverse={self.reverse}"
        )


def iaf(dim: int, depth: int, width: int, context_size: int, fixed_sigma: bool = False, layers: int = 1) -> Chain:
    """`depth` IAF steps of MADE width `width` and `layers` hidden layers, the order reversed between steps."""
    return Chain(
        [IAFStep(dim, width, context_size, fixed_sigma, reverse=bool(k % 2), layers=layers) for k in range(depth)]
    )
