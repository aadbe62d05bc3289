"""Pixel likelihoods p(x|z) given decoder outputs; log_prob sums over (C, H, W).

Decoder outputs `params` have shape (..., params_per_channel * C, H, W) and broadcast
against x (B, C, H, W), so params of shape (S, B, ...) score x without repeating it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class Likelihood:
    """A per-pixel observation model."""

    name: str
    params_per_channel: int

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x | params) summed over the last three dimensions."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """An image in [0, 1] that summarises p(x | params)."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels from logits."""

    name = "bernoulli"
    params_per_channel = 1

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """sum x*logit - softplus(logit)."""
        return (x * params - F.softplus(params)).sum((-3, -2, -1))

    def mean(self, params: Tensor) -> Tensor:
        """Pixel probabilities sigmoid(logit)."""
        return torch.sigmoid(params)


class DiscretizedLogistic(Likelihood):
    """Logistic(mu, s) discretized to 256 bins at k/255; the edge bins are open (PixelCNN++).

    params hold mu (first C channels) and log s (last C channels) per subpixel.
    """

    name = "discretized_logistic"
    params_per_channel = 2
    bins = 256
    min_log_scale = -7.0

    def split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, log_scale), log_scale clamped below for stability."""
        mu, log_scale = params.chunk(2, dim=-3)
        return mu, log_scale.clamp_min(self.min_log_scale)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log P(bin of x) summed over subpixels; x holds k/255."""
        mu, log_scale = self.split(params)
        half_bin = 0.5 / (self.bins - 1)
        inv_s = torch.exp(-log_scale)
        upper = (x - mu + half_bin) * inv_s
        lower = (x - mu - half_bin) * inv_s
        # sigma(a) - sigma(b) = sigma(-b) - sigma(-a): evaluate in the tail where sigma is small.
        flip = upper + lower > 0
        a = torch.where(flip, -lower, upper)
        b = torch.where(flip, -upper, lower)
        log_a = F.logsigmoid(a)
        gap = -torch.expm1(F.logsigmoid(b) - log_a)
        middle = log_a + gap.clamp_min(torch.finfo(gap.dtype).tiny).log()
        first = F.logsigmoid(upper)  # x = 0: P(X <= 0.5/255)
        last = F.logsigmoid(-lower)  # x = 1: P(X > 1 - 0.5/255)
        low_edge = x < half_bin
        high_edge = x > 1.0 - half_bin
        log_p = torch.where(low_edge, first, torch.where(high_edge, last, middle))
        return log_p.sum((-3, -2, -1))

    def mean(self, params: Tensor) -> Tensor:
        """The location mu clamped to [0, 1]."""
        return self.split(params)[0].clamp(0.0, 1.0)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    Bernoulli.name: Bernoulli,
    DiscretizedLogistic.name: DiscretizedLogistic,
}


def get_likelihood(name: str) -> Likelihood:
    """The likelihood called `name`; ValueError lists the known ones."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; expected one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name]()

