"""Amortized planar flow (Rezende & Mohamed 2015): z' = z + u_hat tanh(w.z + b).

u, w and b are not parameters of the flow but come per data point in the context,
laid out step after step as [u (D), w (D), b (1)]. u is reparameterised to u_hat with
w.u_hat = -1 + softplus(w.u) > -1, which keeps every step invertible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flowvae.models.flows.base import Flow

_BISECTION_STEPS = 100


class Planar(Flow):
    """k amortized planar steps; context is (..., k * (2D + 1))."""

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        self.dim = dim
        self.steps = steps
        self.context_size = steps * (2 * dim + 1)

    def extra_repr(self) -> str:
        """Dimensions, for printing."""
        return f"dim={self.dim}, steps={self.steps}, context_size={self.context_size} (u, w, b from the encoder)"

    def _step_params(self, context: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """u_hat, w, b and w.u_hat of step k."""
        d = self.dim
        chunk = context[..., k * (2 * d + 1) : (k + 1) * (2 * d + 1)]
        u, w, b = chunk[..., :d], chunk[..., d : 2 * d], chunk[..., 2 * d]
        wu = (w * u).sum(-1)
        w_sq = w.pow(2).sum(-1).clamp_min(torch.finfo(w.dtype).tiny)
        wu_hat = F.softplus(wu) - 1.0
        u_hat = u + ((wu_hat - wu) / w_sq).unsqueeze(-1) * w
        return u_hat, w, b, wu_hat

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Apply the k steps; log|det| = log(1 + u_hat.w (1 - tanh^2))."""
        total = z.new_zeros(z.shape[:-1])
        for k in range(self.steps):
            u_hat, w, b, wu_hat = self._step_params(context, k)
            t = torch.tanh((w * z).sum(-1) + b)
            z = z + u_hat * t.unsqueeze(-1)
            # 1 + (softplus(w.u) - 1)(1 - t^2) = t^2 + softplus(w.u)(1 - t^2), positive term by term.
            det = t.pow(2) + (wu_hat + 1.0) * (1.0 - t.pow(2))
            total = total + det.clamp_min(torch.finfo(det.dtype).tiny).log()
        return z, total

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Undo the steps: solve a + (w.u_hat) tanh(a + b) = w.z' for a = w.z by bisection."""
        total = z.new_zeros(z.shape[:-1])
        for k in reversed(range(self.steps)):
            u_hat, w, b, wu_hat = self._step_params(context, k)
            target = (w * z).sum(-1)
            spread = wu_hat.abs()
            lo, hi = target - spread, target + spread
            for _ in range(_BISECTION_STEPS):
                mid = 0.5 * (lo + hi)
                above = mid + wu_hat * torch.tanh(mid + b) > target
                hi = torch.where(above, mid, hi)
                lo = torch.where(above, lo, mid)
            t = torch.tanh(0.5 * (lo + hi) + b)
            z = z - u_hat * t.unsqueeze(-1)
            det = t.pow(2) + (wu_hat + 1.0) * (1.0 - t.pow(2))
            total = total - det.clamp_min(torch.finfo(det.dtype).tiny).log()
        return z, total
