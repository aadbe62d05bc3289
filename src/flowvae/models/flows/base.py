"""The flow interface: a map z -> z' that also returns log|det dz'/dz| per sample."""

from __future__ import annotations

from torch import Tensor, nn


class Flow(nn.Module):
    """An invertible map of z (..., D) given a per-datapoint context (..., C).

    Flows on feature maps (the ladder's IAF) take z (..., C, H, W) and return log|det| of shape
    z.shape[:-3]. The context broadcasts against z's leading dimensions, so a (B, C) context serves
    z of shape (B, D) or (S, B, D) without being repeated S times.
    """

    dim: int
    context_size: int  # features of context that the flow reads per data point

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Return z' = f(z) and log|det df/dz| with shape z.shape[:-1]."""
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Return f^-1(z) and log|det df^-1/dz| with shape z.shape[:-1]."""
        raise NotImplementedError


class Identity(Flow):
    """No flow: the posterior stays the base Gaussian."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.context_size = 0

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Return z unchanged and a zero log-determinant."""
        return z, z.new_zeros(z.shape[:-1])

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Return z unchanged and a zero log-determinant."""
        return z, z.new_zeros(z.shape[:-1])


class Chain(Flow):
    """Steps applied in order, all reading the same context."""

    def __init__(self, steps: list[Flow]) -> None:
        super().__init__()
        if not steps:
            raise ValueError("a Chain needs at least one step")
        self.steps = nn.ModuleList(steps)
        self.dim = steps[0].dim
        self.context_size = steps[0].context_size

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Apply every step; sum their log-determinants."""
        total = z.new_zeros(z.shape[:-1])
        for step in self.steps:
            z, ladj = step(z, context)
            total = total + ladj
        return z, total

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Undo every step in reverse order."""
        total = z.new_zeros(z.shape[:-1])
        for step in reversed(self.steps):
            z, ladj = step.inverse(z, context)
            total = total + ladj
        return z, total

