"""Real-NVP affine coupling (Dinh et al. 2017) conditioned on an encoder context h.

A coupling keeps half of z and transforms the other half:
z'_moved = z_moved * exp(s) + t, with (s, t) = net(z_kept, h) and s = scale * tanh(.) bounded.
One step is two couplings with complementary alternating halves, so every dimension moves.
The s/t network reads only the kept half and writes only the moved half (the same function as a
network on a masked z whose unused outputs are dropped, at half the cost of those two layers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowvae.models.flows.base import Flow


class AffineCoupling(Flow):
    """One affine coupling layer; its s/t network has one ELU hidden layer that also sees h.

    parity 0 keeps the even dimensions (0, 2, ...) and moves the odd ones; parity 1 the reverse.
    """

    def __init__(self, dim: int, context_size: int, hidden: int, parity: int) -> None:
        super().__init__()
        self.dim = dim
        self.context_size = context_size
        self.parity = parity
        index = torch.arange(dim)
        kept, moved = index[index % 2 == parity], index[index % 2 != parity]
        self.register_buffer("kept", kept, persistent=False)
        self.register_buffer("moved", moved, persistent=False)
        self.register_buffer("unshuffle", torch.argsort(torch.cat([kept, moved])), persistent=False)
        self.inp = nn.Linear(len(kept), hidden)
        self.ctx = nn.Linear(context_size, hidden, bias=False) if context_size else None
        self.out = nn.Linear(hidden, 2 * len(moved))
        self.scale = nn.Parameter(torch.ones(len(moved)))
        # Start as the identity map.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def extra_repr(self) -> str:
        """Dimensions, for printing."""
        return f"dim={self.dim}, context_size={self.context_size}, kept={'even' if self.parity == 0 else 'odd'}"

    def _shift_and_log_scale(self, z_kept: Tensor, context_pre: Tensor | None) -> tuple[Tensor, Tensor]:
        """(t, s) of the moved half; context_pre is the context's projection ctx(h), computed by the caller."""
        pre = self.inp(z_kept)
        if context_pre is not None:
            pre = pre + context_pre
        s_raw, t = self.out(F.elu(pre)).chunk(2, dim=-1)
        return t, self.scale * torch.tanh(s_raw)

    def _join(self, z_kept: Tensor, z_moved: Tensor) -> Tensor:
        return torch.cat([z_kept, z_moved], dim=-1)[..., self.unshuffle]

    def coupled(self, z: Tensor, context_pre: Tensor | None, inverse: bool = False) -> tuple[Tensor, Tensor]:
        """The coupling (or its inverse) given the context's projection: z' and log|det|."""
        z_kept, z_moved = z[..., self.kept], z[..., self.moved]
        t, s = self._shift_and_log_scale(z_kept, context_pre)
        if inverse:
            return self._join(z_kept, (z_moved - t) * torch.exp(-s)), -s.sum(-1)
        return self._join(z_kept, torch.addcmul(t, z_moved, torch.exp(s))), s.sum(-1)

    def _context_pre(self, context: Tensor) -> Tensor | None:
        return self.ctx(context) if self.ctx is not None else None

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """z'_moved = z_moved*exp(s) + t; log|det| = sum s."""
        return self.coupled(z, self._context_pre(context))

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """z_moved = (z'_moved - t) exp(-s); the kept half is unchanged, so s and t are recomputed exactly."""
        return self.coupled(z, self._context_pre(context), inverse=True)


class RealNVP(Flow):
    """Couplings applied in order; the context's projections for all of them come from one matrix product."""

    def __init__(self, couplings: list[AffineCoupling]) -> None:
        super().__init__()
        if not couplings:
            raise ValueError("a real NVP flow needs at least one coupling")
        self.steps = nn.ModuleList(couplings)
        self.dim = couplings[0].dim
        self.context_size = couplings[0].context_size

    def _context_pres(self, context: Tensor) -> list[Tensor | None]:
        if not self.context_size:
            return [None] * len(self.steps)
        weight = torch.cat([c.ctx.weight for c in self.steps])
        return list(F.linear(context, weight).chunk(len(self.steps), dim=-1))

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Apply every coupling; sum their log-determinants."""
        total = z.new_zeros(z.shape[:-1])
        for coupling, pre in zip(self.steps, self._context_pres(context)):
            z, ladj = coupling.coupled(z, pre)
            total = total + ladj
        return z, total

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Undo every coupling in reverse order."""
        total = z.new_zeros(z.shape[:-1])
        for coupling, pre in reversed(list(zip(self.steps, self._context_pres(context)))):
            z, ladj = coupling.coupled(z, pre, inverse=True)
            total = total + ladj
        return z, total


def real_nvp(dim: int, steps: int, context_size: int, hidden: int) -> RealNVP:
    """`steps` real-NVP steps, each two couplings with complementary halves."""
    return RealNVP([AffineCoupling(dim, context_size, hidden, parity) for _ in range(steps) for parity in (0, 1)])
