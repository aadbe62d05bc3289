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
    eight_bit: bool = False  # models 8-bit intensities k/255 (then bits/dim are reported)

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
    eight_bit = True
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


class Categorical(Likelihood):
    """A 256-way categorical distribution per subpixel (van den Berg et al. 2018's 'multinomial' output).

    params hold the 256 logits of channel c in channels c*256 .. c*256+255; x holds k/255.
    """

    name = "categorical"
    params_per_channel = 256
    eight_bit = True
    classes = 256

    def logits(self, params: Tensor) -> Tensor:
        """params (..., 256 C, H, W) as (..., C, 256, H, W)."""
        *lead, channels, height, width = params.shape
        return params.view(*lead, channels // self.classes, self.classes, height, width)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log softmax of the logits at each subpixel's bin, summed."""
        log_p = F.log_softmax(self.logits(params), dim=-3)
        bins = torch.round(x * (self.classes - 1)).long().unsqueeze(-3)
        bins = bins.expand(*log_p.shape[:-3], 1, *log_p.shape[-2:])
        return log_p.gather(-3, bins).squeeze(-3).sum((-3, -2, -1))

    def mean(self, params: Tensor) -> Tensor:
        """The expected intensity sum_k p_k k/255."""
        probs = torch.softmax(self.logits(params), dim=-3)
        levels = torch.arange(self.classes, dtype=probs.dtype, device=probs.device) / (self.classes - 1)
        return (probs * levels.view(-1, 1, 1)).sum(-3)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    Bernoulli.name: Bernoulli,
    DiscretizedLogistic.name: DiscretizedLogistic,
    Categorical.name: Categorical,
}


def get_likelihood(name: str) -> Likelihood:
    """The likelihood called `name`; ValueError lists the known ones."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; expected one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name]()

