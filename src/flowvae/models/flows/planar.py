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

    def _step_params(self, context: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """u_hat, w (..., k, D), b and w.u_hat (..., k) of every step, computed for all steps at once."""
        d = self.dim
        chunks = context.unflatten(-1, (self.steps, 2 * d + 1))
        u, w, b = chunks[..., :d], chunks[..., d : 2 * d], chunks[..., 2 * d]
        wu = (w * u).sum(-1)
        w_sq = w.pow(2).sum(-1).clamp_min(torch.finfo(w.dtype).tiny)
        wu_hat = F.softplus(wu) - 1.0
        u_hat = u + ((wu_hat - wu) / w_sq).unsqueeze(-1) * w
        return u_hat, w, b, wu_hat

    @staticmethod
    def _log_det(t: Tensor, wu_hat: Tensor) -> Tensor:
        """sum over steps of log(1 + u_hat.w (1 - t^2)) for the steps' tanh values t (..., k)."""
        # 1 + (softplus(w.u) - 1)(1 - t^2) = t^2 + softplus(w.u)(1 - t^2), positive term by term.
        t_sq = t.pow(2)
        det = t_sq + (wu_hat + 1.0) * (1.0 - t_sq)
        return det.clamp_min(torch.finfo(det.dtype).tiny).log().sum(-1)

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Apply the k steps; only z's update is sequential, the parameters and log-determinants are batched over steps."""
        u_hat, w, b, wu_hat = self._step_params(context)
        ts = []
        for k in range(self.steps):
            t = torch.tanh((w[..., k, :] * z).sum(-1) + b[..., k])
            z = torch.addcmul(z, u_hat[..., k, :], t.unsqueeze(-1))
            ts.append(t)
        return z, self._log_det(torch.stack(ts, -1), wu_hat)

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Undo the steps: solve a + (w.u_hat) tanh(a + b) = w.z' for a = w.z by bisection."""
        u_hat, w, b, wu_hat = self._step_params(context)
        ts = []
        for k in reversed(range(self.steps)):
            target = (w[..., k, :] * z).sum(-1)
            spread = wu_hat[..., k].abs()
            lo, hi = target - spread, target + spread
            for _ in range(_BISECTION_STEPS):
                mid = 0.5 * (lo + hi)
                above = mid + wu_hat[..., k] * torch.tanh(mid + b[..., k]) > target
                hi = torch.where(above, mid, hi)
                lo = torch.where(above, lo, mid)
            t = torch.tanh(0.5 * (lo + hi) + b[..., k])
            z = z - u_hat[..., k, :] * t.unsqueeze(-1)
            ts.append(t)
        return z, -self._log_det(torch.stack(ts[::-1], -1), wu_hat)
