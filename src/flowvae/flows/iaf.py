"""Inverse autoregressive flow (Kingma et al. 2016) with MADE steps (see made.py).

Learnt sigma: (m, s) = MADE(z, h), sigma = sigmoid(s), z' = sigma*z + (1 - sigma)*m,
log|det| = sum log sigma; the bias of s starts at +1.5 so sigma starts near 0.82.
Fixed sigma: z' = z + m, log|det| = 0 (volume preserving).
The order of the dimensions is reversed between consecutive steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flowvae.flows.base import Chain, Flow
from flowvae.flows.made import MADE

SIGMA_BIAS = 1.5


class IAFStep(Flow):
    """One IAF step with a MADE of width `hidden`."""

    def __init__(
        self, dim: int, hidden: int, context_size: int, fixed_sigma: bool = False, reverse: bool = False
    ) -> None:
        super().__init__()
        self.dim = dim
        self.context_size = context_size
        self.fixed_sigma = fixed_sigma
        self.reverse = reverse
        order = torch.arange(dim).flip(0) if reverse else torch.arange(dim)
        self.made = MADE(dim, hidden, context_size, order, outputs_per_dim=1 if fixed_sigma else 2)
        if not fixed_sigma:
            with torch.no_grad():
                self.made.out.bias[dim:].fill_(SIGMA_BIAS)

    def extra_repr(self) -> str:
        """Settings, for printing."""
        return (
            f"dim={self.dim}, context_size={self.context_size}, "
            f"fixed_sigma={self.fixed_sigma}, reverse={self.reverse}"
        )

    def _m_and_log_sigma(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor | None]:
        """Shift m and log sigma (None when sigma is fixed to 1)."""
        out = self.made(z, context)
        if self.fixed_sigma:
            return out, None
        m, s = out.chunk(2, dim=-1)
        return m, F.logsigmoid(s)

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """z' = sigma*z + (1 - sigma)*m, or z + m when sigma is fixed."""
        m, log_sigma = self._m_and_log_sigma(z, context)
        if log_sigma is None:
            return z + m, z.new_zeros(z.shape[:-1])
        sigma = log_sigma.exp()
        return sigma * z + (1.0 - sigma) * m, log_sigma.sum(-1)

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Invert by D fixed-point passes; pass k fixes the k-th dimension in the order exactly."""
        x = z
        for _ in range(self.dim):
            m, log_sigma = self._m_and_log_sigma(x, context)
            x = z - m if log_sigma is None else (z - (1.0 - log_sigma.exp()) * m) * torch.exp(-log_sigma)
        if log_sigma is None:
            return x, z.new_zeros(z.shape[:-1])
        return x, -log_sigma.sum(-1)


def iaf(dim: int, depth: int, width: int, context_size: int, fixed_sigma: bool = False) -> Chain:
    """`depth` IAF steps of MADE width `width`, the order reversed between steps."""
    return Chain(
        [IAFStep(dim, width, context_size, fixed_sigma, reverse=bool(k % 2)) for k in range(depth)]
    )
