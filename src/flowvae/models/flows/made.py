"""MADE (Germain et al. 2015) with `layers` masked hidden layers and a context input.

Kept cheap on purpose (it runs at width 1920, depth 8 on a CPU): by default one masked hidden
layer of `hidden` ELU units, to which a dense projection of the context h is added, then a
masked output layer giving `outputs_per_dim` values per input dimension. Further hidden layers
(Kingma et al. 2016 use two) are masked hidden-to-hidden ELU layers of the same width.

Degrees: input i gets its position in `order` (1..D); hidden units get degrees 0..D-1
assigned cyclically (deterministic), the same in every hidden layer; a hidden unit of degree k
sees units of degree <= k below it and feeds outputs of degree > k. Degree-0 units see only the
context, so even the first output in the order depends on h.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask."""

    def __init__(self, mask: Tensor, bias: bool = True) -> None:
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.float())

    def forward(self, x: Tensor) -> Tensor:
        """Masked affine map."""
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Autoregressive network: output block j, dimension i depends only on inputs before i in `order`."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        context_size: int,
        order: Tensor,
        outputs_per_dim: int = 2,
        layers: int = 1,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"a MADE needs at least one hidden layer, not {layers}")
        self.dim = dim
        self.outputs_per_dim = outputs_per_dim
        in_degree = torch.as_tensor(order).long() + 1
        if sorted(in_degree.tolist()) != list(range(1, dim + 1)):
            raise ValueError(f"order must be a permutation of 0..{dim - 1}")
        hidden_degree = torch.arange(hidden) % dim
        self.register_buffer("order", in_degree - 1)
        self.hidden = MaskedLinear(hidden_degree[:, None] >= in_degree[None, :])
        self.context = nn.Linear(context_size, hidden, bias=False) if context_size else None
        self.deeper = nn.ModuleList(
            MaskedLinear(hidden_degree[:, None] >= hidden_degree[None, :]) for _ in range(layers - 1)
        )
        out_mask = in_degree[:, None] > hidden_degree[None, :]
        self.out = MaskedLinear(out_mask.repeat(outputs_per_dim, 1))

    def extra_repr(self) -> str:
        """Settings, for printing."""
        return (
            f"dim={self.dim}, hidden={self.hidden.out_features}, layers={1 + len(self.deeper)}, "
            f"outputs_per_dim={self.outputs_per_dim}"
        )

    def forward(self, z: Tensor, context: Tensor) -> Tensor:
        """Return (..., outputs_per_dim * D): block j holds output j for every dimension."""
        pre = self.hidden(z)
        if self.context is not None:
            pre = pre + self.context(context)
        a = F.elu(pre)
        for layer in self.deeper:
            a = F.elu(layer(a))
        return self.out(a)
