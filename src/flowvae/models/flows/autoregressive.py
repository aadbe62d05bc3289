"""One autoregressive affine step, shared by the MADE IAF (iaf.py) and the ladder's masked-conv IAF.

z' = exp(log_scale) * z + shift, where (shift, log_scale) = hyper(z, context) are elementwise and
autoregressive in z: the pair at element i depends only on elements before i in the hyper-network's
order. The Jacobian is triangular in that order, so log|det| = sum log_scale over the event.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowvae.models.flows.base import Flow


class AutoregressiveAffine(Flow):
    """An affine autoregressive step on events of `event_dims` dimensions (1: vectors, 3: (C, H, W) maps).

    `hyper` maps (z, context) to (shift, log_scale), both shaped like z.
    """

    def __init__(self, hyper: nn.Module, dim: int, context_size: int, event_dims: int = 1) -> None:
        super().__init__()
        self.hyper = hyper
        self.dim = dim
        self.context_size = context_size
        self.event_dims = event_dims

    def extra_repr(self) -> str:
        """Settings, for printing."""
        return f"dim={self.dim}, context_size={self.context_size}, event_dims={self.event_dims}"

    def _event_sum(self, t: Tensor) -> Tensor:
        return t.sum(tuple(range(-self.event_dims, 0)))

    def elementwise(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """z' and the elementwise log_scale (log|det| is its sum over the event)."""
        shift, log_scale = self.hyper(z, context)
        return torch.exp(log_scale) * z + shift, log_scale

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """z' = exp(log_scale) z + shift and log|det| per event."""
        z, log_scale = self.elementwise(z, context)
        return z, self._event_sum(log_scale)

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Invert by fixed-point passes, one per element of the event: pass k fixes the k-th element in the order."""
        x = z
        for _ in range(math.prod(z.shape[z.dim() - self.event_dims :])):
            shift, log_scale = self.hyper(x, context)
            x = (z - shift) * torch.exp(-log_scale)
        return x, -self._event_sum(log_scale)
