"""Real-NVP affine coupling (Dinh et al. 2017) conditioned on an encoder context h.

A coupling keeps the masked half of z and transforms the rest:
z' = b*z + (1-b)*(z*exp(s) + t), with (s, t) = net(b*z, h) and s = scale * tanh(.) bounded.
One step is two couplings with complementary alternating masks, so every dimension moves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowvae.models.flows.base import Chain, Flow


class AffineCoupling(Flow):
    """One affine coupling layer; its s/t network has one ELU hidden layer that also sees h."""

    def __init__(self, dim: int, context_size: int, hidden: int, parity: int) -> None:
        super().__init__()
        self.dim = dim
        self.context_size = context_size
        self.register_buffer("mask", (torch.arange(dim) % 2 == parity).float())
        self.inp = nn.Linear(dim, hidden)
        self.ctx = nn.Linear(context_size, hidden, bias=False) if context_size else None
        self.out = nn.Linear(hidden, 2 * dim)
        self.scale = nn.Parameter(torch.ones(dim))
        # Start as the identity map.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def extra_repr(self) -> str:
        """Dimensions, for printing."""
        return f"dim={self.dim}, context_size={self.context_size}, kept={'even' if self.mask[0] else 'odd'}"

    def _shift_and_log_scale(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """(t, s) restricted to the transformed (unmasked) dimensions."""
        pre = self.inp(z * self.mask)
        if self.ctx is not None:
            pre = pre + self.ctx(context)
        s_raw, t = self.out(F.elu(pre)).chunk(2, dim=-1)
        keep = 1.0 - self.mask
        return t * keep, self.scale * torch.tanh(s_raw) * keep

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """z' = z*exp(s) + t on the unmasked dimensions; log|det| = sum s."""
        t, s = self._shift_and_log_scale(z, context)
        return z * torch.exp(s) + t, s.sum(-1)

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """z = (z' - t) exp(-s); the masked half is unchanged, so s and t are recomputed exactly."""
        t, s = self._shift_and_log_scale(z, context)
        return (z - t) * torch.exp(-s), -s.sum(-1)


def real_nvp(dim: int, steps: int, context_size: int, hidden: int) -> Chain:
    """`steps` real-NVP steps, each two couplings with complementary masks."""
    return Chain(
        [AffineCoupling(dim, context_size, hidden, parity) for _ in range(steps) for parity in (0, 1)]
    )
