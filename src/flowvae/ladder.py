"""The bidirectional ResNet VAE of Kingma et al. (2016), laid out as their released CIFAR-10 code.

Layout for r rungs (stochastic layers) and `stages` resolutions (default 1):

    x - 1/2 -> 5x5 stride-2 conv -> up rungs 0 .. r-1 -> h_top (learnt, tiled)
            -> down rungs r-1 .. 0 -> ELU -> 5x5 stride-2 transposed conv -> p(x|z)

Rung 0 lies next to the data, rung r-1 at the top. Rung i belongs to stage i*stages//r; the first rung
of every later stage halves the resolution on the way up (stride-2 conv, nearest-neighbour skip) and
doubles it on the way down (stride-2 transposed conv, nearest-neighbour skip). With stages = 1 every
latent is an H/2 x W/2 map (the released code with one block: 16x16 on CIFAR-10, any r >= 1); stages = 2
gives its two blocks (r = 20: ten rungs at 16x16, ten at 8x8). stages is capped at r; H and W must be
divisible by 2**stages.

Rung i, with z_i of `z_channels` feature maps (every residual branch scaled by 0.1, ELU throughout):

    up:    q_mean, q_log_std, ctx_up, a = conv(elu(h));        h <- h + 0.1 conv(elu(a))
    down:  p_mean, p_log_std, r_mean, r_log_std, ctx_down, d = conv(elu(h))
           prior p(z_i | z_>i)      = N(p_mean, exp(p_log_std))
           posterior base q(z_i | .) = N(q_mean + r_mean, exp(q_log_std + r_log_std))
           iaf: z <- (z - m) * sigma, (m, log sigma) = 0.1 * masked ConvNet(z, ctx_up + ctx_down)
           h <- h + 0.1 conv(elu([z, d]))

The IAF ConvNet is PixelCNN-style: 3x3 convolutions masked to raster order (mask A on z, mask B after),
so log|det dz'/dz| = sum log sigma and log q(z|x) = base log-density - sum log sigma. KL terms are single
sample log q - log p, grouped per (rung, feature map) for free bits. Every convolution is
weight-normalised, initialised from data by `initialize(x)`. The discretized logistic likelihood has a
location per subpixel and one learnt log-scale (as released), initialised from the data as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowvae.likelihoods import get_likelihood
from flowvae.vae import VAEOutput
from flowvae.variants import Variant, parse_variant

LADDER_DEFAULTS: dict[str, Any] = {"channels": 64, "z_channels": 32, "free_bits": 0.1, "stages": 1}
RESIDUAL_SCALE = 0.1
IAF_SCALE = 0.1  # (m, log sigma) = 0.1 * ConvNet output, as released
HEAD_INIT_SCALE = 0.1  # initial spread of the Gaussian parameters and the image location
_LOG_2PI = math.log(2.0 * math.pi)

Noise = Callable[[Tensor], Tensor]
UpStats = tuple[Tensor, Tensor, Tensor]  # posterior mean, log-std and IAF context of one rung


def ladder_settings(net: dict[str, Any]) -> dict[str, Any]:
    """The ladder settings with defaults filled in; ValueError names unknown keys or bad values."""
    unknown = sorted(set(net) - set(LADDER_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in ladder settings; known: {sorted(LADDER_DEFAULTS)}")
    s = {**LADDER_DEFAULTS, **net}
    for key in ("channels", "z_channels", "stages"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise ValueError(f"ladder setting {key} must be a positive integer, not {s[key]!r}")
    if float(s["free_bits"]) < 0:
        raise ValueError(f"ladder setting free_bits must be >= 0, not {s['free_bits']!r}")
    return s


def autoregressive_mask(deg_in: Tensor, deg_out: Tensor, kernel: int, strict: bool) -> Tensor:
    """(c_out, c_in, k, k) raster-order mask; at the centre, input degree < (mask A) or <= (mask B) output degree."""
    c = kernel // 2
    mask = torch.zeros(len(deg_out), len(deg_in), kernel, kernel)
    mask[:, :, :c, :] = 1.0
    mask[:, :, c, :c] = 1.0
    below = deg_in[None, :] < deg_out[:, None] if strict else deg_in[None, :] <= deg_out[:, None]
    mask[:, :, c, c] = below.float()
    return mask


class WNConv2d(nn.Module):
    """Weight-normalised k x k convolution, w = g v / |v| (transposed: upsampling), optional weight mask."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 3,
        stride: int = 1,
        transpose: bool = False,
        mask: Tensor | None = None,
        init_scale: float | list[float] = 1.0,
    ) -> None:
        super().__init__()
        self.c_in, self.c_out, self.kernel, self.stride, self.transpose = c_in, c_out, kernel, stride, transpose
        shape = (c_in, c_out, kernel, kernel) if transpose else (c_out, c_in, kernel, kernel)
        self.v = nn.Parameter(0.05 * torch.randn(shape))
        self.g = nn.Parameter(torch.ones(c_out))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.register_buffer("mask", mask, persistent=False)
        scale = torch.as_tensor(init_scale, dtype=torch.float32).expand(c_out).clone()
        self.register_buffer("init_scale", scale, persistent=False)
        self.init_pending = False  # set by LadderVAE.initialize: the next forward sets g and bias from its input

    def extra_repr(self) -> str:
        """Settings, for printing."""
        kind = "transposed, " if self.transpose else ""
        masked = ", masked" if self.mask is not None else ""
        return f"{self.c_in}, {self.c_out}, {kind}kernel={self.kernel}, stride={self.stride}{masked}"

    def weight(self) -> Tensor:
        """g v / |v|, the norm taken per output channel over the (masked) kernel."""
        v = self.v if self.mask is None else self.v * self.mask
        out_dim = 1 if self.transpose else 0
        shape = [1, 1, 1, 1]
        shape[out_dim] = -1
        norm = v.pow(2).sum([d for d in range(4) if d != out_dim], keepdim=True).clamp_min(1e-24).sqrt()
        return v * (self.g.view(shape) / norm)

    def _conv(self, x: Tensor, bias: Tensor | None) -> Tensor:
        pad = self.kernel // 2
        if self.transpose:
            return F.conv_transpose2d(x, self.weight(), bias, self.stride, pad, output_padding=self.stride - 1)
        return F.conv2d(x, self.weight(), bias, self.stride, pad)

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        """Set g and bias so that this batch's outputs have zero mean and std init_scale per channel."""
        self.init_pending = False
        self.g.fill_(1.0)
        out = self._conv(x, None)
        mean, std = out.mean((0, 2, 3)), out.std((0, 2, 3), unbiased=False)
        scale = self.init_scale.to(out.dtype)
        # A constant input (the top rung reads the tiled h_top) keeps |w| = init_scale.
        g = torch.where(std > 1e-6, scale / std.clamp_min(1e-6), scale)
        self.g.copy_(g)
        self.bias.copy_(-mean * g)

    def forward(self, x: Tensor) -> Tensor:
        """Convolve (after the data-dependent initialisation, if one is pending)."""
        if self.init_pending:
            self._initialize(x)
        return self._conv(x, self.bias)


class MaskedIAF(nn.Module):
    """One IAF step on feature maps: z' = (z - m) * sigma, (m, log sigma) from a raster-order masked ConvNet."""

    def __init__(self, z_channels: int, hidden: int, context: int) -> None:
        super().__init__()
        if context != hidden:
            raise ValueError(f"the IAF context ({context}) must have one feature map per hidden unit ({hidden})")
        dz = torch.arange(z_channels)
        dh = torch.arange(hidden) * z_channels // hidden
        self.conv_in = WNConv2d(z_channels, hidden, mask=autoregressive_mask(dz, dh, 3, strict=True))
        self.conv_hidden = WNConv2d(hidden, hidden, mask=autoregressive_mask(dh, dh, 3, strict=False))
        self.conv_out = WNConv2d(hidden, 2 * z_channels, mask=autoregressive_mask(dh, torch.cat([dz, dz]), 3, False))

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """z' and the elementwise log sigma (log|det| = its sum)."""
        a = F.elu(self.conv_in(z) + context)
        a = F.elu(self.conv_hidden(a))
        m, s = (IAF_SCALE * self.conv_out(a)).chunk(2, dim=1)
        return (z - m) * torch.exp(-s), -s


class UpRung(nn.Module):
    """Bottom-up half of a rung: posterior features of z_i from x."""

    def __init__(self, channels: int, z_channels: int, context: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.sizes = [z_channels, z_channels, context, channels]
        scales = [HEAD_INIT_SCALE] * (2 * z_channels) + [1.0] * (context + channels)
        self.conv1 = WNConv2d(channels, sum(self.sizes), stride=2 if downsample else 1, init_scale=scales)
        self.conv2 = WNConv2d(channels, channels)

    def extra_repr(self) -> str:
        """Settings, for printing."""
        return f"downsample={self.downsample}"

    def forward(self, h: Tensor) -> tuple[Tensor, UpStats]:
        """The next h and this rung's (posterior mean, log-std, IAF context)."""
        q_mean, q_log_std, ctx, a = self.conv1(F.elu(h)).split(self.sizes, dim=1)
        if self.downsample:
            h = h[:, :, ::2, ::2]
        return h + RESIDUAL_SCALE * self.conv2(F.elu(a)), (q_mean, q_log_std, ctx)


class DownRung(nn.Module):
    """Top-down half of a rung: the prior of z_i, the top-down part of its posterior, and the merge of z_i."""

    def __init__(self, channels: int, z_channels: int, context: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.sizes = [z_channels] * 4 + [context, channels]
        scales = [HEAD_INIT_SCALE] * (4 * z_channels) + [1.0] * (context + channels)
        self.conv1 = WNConv2d(channels, sum(self.sizes), init_scale=scales)
        self.conv2 = WNConv2d(z_channels + channels, channels, stride=2 if upsample else 1, transpose=upsample)

    def extra_repr(self) -> str:
        """Settings, for printing."""
        return f"upsample={self.upsample}"

    def features(self, h: Tensor) -> tuple[Tensor, ...]:
        """(prior mean, prior log-std, posterior mean shift, posterior log-std shift, IAF context, d)."""
        return self.conv1(F.elu(h)).split(self.sizes, dim=1)

    def merge(self, h: Tensor, z: Tensor, d: Tensor) -> Tensor:
        """The next h below this rung, given z_i."""
        if self.upsample:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return h + RESIDUAL_SCALE * self.conv2(F.elu(torch.cat([z, d], dim=1)))


class BottomUp(nn.Module):
    """The inference path: x -> stem -> up rungs 0 .. r-1."""

    def __init__(self, image_channels: int, channels: int, z_channels: int, context: int, downsample: list[bool]):
        super().__init__()
        self.stem = WNConv2d(image_channels, channels, kernel=5, stride=2)
        self.rungs = nn.ModuleList(UpRung(channels, z_channels, context, d) for d in downsample)

    def forward(self, x: Tensor) -> list[UpStats]:
        """Posterior features of every rung, rung 0 first."""
        h = self.stem(x - 0.5)
        stats = []
        for rung in self.rungs:
            h, s = rung(h)
            stats.append(s)
        return stats


class TopDown(nn.Module):
    """The generative path: h_top -> down rungs r-1 .. 0 -> ELU -> transposed 5x5 conv -> likelihood parameters."""

    def __init__(
        self,
        image_channels: int,
        channels: int,
        z_channels: int,
        context: int,
        downsample: list[bool],
        top_hw: tuple[int, int],
        learnt_log_scale: bool,
    ) -> None:
        super().__init__()
        self.top_hw = top_hw
        self.h_top = nn.Parameter(torch.zeros(channels))
        self.rungs = nn.ModuleList(DownRung(channels, z_channels, context, d) for d in downsample)
        self.out = WNConv2d(channels, image_channels, kernel=5, stride=2, transpose=True, init_scale=HEAD_INIT_SCALE)
        self.log_scale = nn.Parameter(torch.zeros(())) if learnt_log_scale else None
        self.offset = 0.5 if learnt_log_scale else 0.0  # locations live in [0, 1]; logits around 0

    def start(self, n: int) -> Tensor:
        """h_top tiled over n images."""
        return self.h_top.view(1, -1, 1, 1).expand(n, -1, *self.top_hw)

    def params(self, h: Tensor) -> Tensor:
        """Likelihood parameters (n, params_per_channel * C, H, W) from the last h."""
        loc = self.out(F.elu(h)) + self.offset
        if self.log_scale is None:
            return loc
        return torch.cat([loc, self.log_scale.expand_as(loc)], dim=1)


def _add_per_image(a: Tensor, b: Tensor) -> Tensor:
    """a (S*B, ...) + b (B, ...), without repeating b S times."""
    return (a.view(-1, *b.shape) + b).view(a.shape)


def _normal_log_prob(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Elementwise log N(z; mean, exp(log_std)^2)."""
    return -0.5 * (((z - mean) * torch.exp(-log_std)).pow(2) + _LOG_2PI) - log_std


class LadderVAE(nn.Module):
    """Bidirectional ResNet VAE with `rungs` stochastic layers; diagonal Gaussian or one-step IAF posteriors."""

    def __init__(
        self, variant: Variant, settings: dict[str, Any], image_shape: tuple[int, int, int], likelihood: str
    ) -> None:
        super().__init__()
        if variant.family != "resvae":
            raise ValueError(f"{variant.name!r} is not a resvae variant")
        self.variant = variant
        self.net = settings
        self.likelihood = get_likelihood(likelihood)
        if self.likelihood.params_per_channel not in (1, 2):
            raise ValueError(f"the ladder supports likelihoods with 1 or 2 parameters per channel, not {likelihood!r}")
        self.image_shape = tuple(image_shape)
        c, height, width = self.image_shape
        rungs, channels, z_channels = variant.steps, settings["channels"], settings["z_channels"]
        stages = min(settings["stages"], rungs)
        if height % 2**stages or width % 2**stages:
            raise ValueError(f"image size {height}x{width} is not divisible by {2**stages} ({stages} stage(s))")
        stage = [i * stages // rungs for i in range(rungs)]
        downsample = [i > 0 and stage[i] != stage[i - 1] for i in range(rungs)]
        self.iaf = variant.ladder_posterior == "iaf"
        context = channels if self.iaf else 0
        self.z_shapes: list[tuple[int, int, int]] = []
        h, w = height // 2, width // 2
        for d in downsample:
            h, w = (h // 2, w // 2) if d else (h, w)
            self.z_shapes.append((z_channels, h, w))
        self.latent_dim = sum(math.prod(s) for s in self.z_shapes)
        self.encoder = BottomUp(c, channels, z_channels, context, downsample)
        self.flow = nn.ModuleList(MaskedIAF(z_channels, channels, context) for _ in range(rungs) if self.iaf)
        self.decoder = TopDown(
            c, channels, z_channels, context, downsample, (h, w), self.likelihood.params_per_channel == 2
        )

    def _top_down(
        self,
        n: int,
        up: list[UpStats] | None = None,
        given: list[Tensor] | None = None,
        noise: Noise = torch.randn_like,
    ) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Generative pass on n = S*B images with z from the posterior (`up`), the prior, or `given`."""
        # Returns likelihood parameters and, per rung (rung 0 first), z and, for the posterior only,
        # log q and log p summed per (image, feature map) and the base posterior mean.
        rungs = len(self.z_shapes)
        zs: list[Tensor] = [torch.empty(0)] * rungs
        log_q: list[Tensor] = [torch.empty(0)] * rungs
        log_p: list[Tensor] = [torch.empty(0)] * rungs
        means: list[Tensor] = [torch.empty(0)] * rungs
        h = self.decoder.start(n)
        for i in reversed(range(rungs)):
            rung = self.decoder.rungs[i]
            p_mean, p_log_std, r_mean, r_log_std, ctx, d = rung.features(h)
            if given is not None:
                z = given[i]
            elif up is None:
                z = p_mean + torch.exp(p_log_std) * noise(p_mean)
            else:
                q_mean, q_log_std, q_ctx = up[i]
                mean, log_std = _add_per_image(r_mean, q_mean), _add_per_image(r_log_std, q_log_std)
                eps = noise(mean)
                z = mean + torch.exp(log_std) * eps
                lq = -0.5 * (eps.pow(2) + _LOG_2PI) - log_std
                if self.iaf:
                    z, log_sigma = self.flow[i](z, _add_per_image(ctx, q_ctx))
                    lq = lq - log_sigma
                log_q[i] = lq.sum((2, 3))
                log_p[i] = _normal_log_prob(z, p_mean, p_log_std).sum((2, 3))
                means[i] = mean
            zs[i] = z
            h = rung.merge(h, z, d)
        return self.decoder.params(h), zs, log_q, log_p, means

    def forward(self, x: Tensor, n_samples: int = 1) -> VAEOutput:
        """Bottom-up once per image, top-down on all S*B samples; KL per (rung, feature map) in kl_groups."""
        # mu: the base posterior means, which depend on z_>i, averaged over the S samples.
        b, s = x.shape[0], n_samples
        params, zs, log_q, log_p, means = self._top_down(s * b, self.encoder(x))
        log_px_z = self.likelihood.log_prob(params.view(s, b, *params.shape[1:]), x)
        lq = torch.cat(log_q, dim=1).view(s, b, -1)
        lp = torch.cat(log_p, dim=1).view(s, b, -1)
        z = torch.cat([t.flatten(1) for t in zs], dim=1).view(s, b, -1)
        mu = torch.cat([t.flatten(1) for t in means], dim=1).view(s, b, -1).mean(0)
        return VAEOutput(
            log_px_z=log_px_z, log_pz=lp.sum(-1), log_qz=lq.sum(-1), z=z, mu=mu, kl_groups=lq - lp
        )

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent init: per channel, zero mean and std init_scale of every convolution's outputs on x."""
        # init_scale is 1, or 0.1 for Gaussian parameters and the image location; the logistic
        # log-scale is set to match the residuals of the initial reconstructions.
        convs = [m for m in self.modules() if isinstance(m, WNConv2d)]
        for m in convs:
            m.init_pending = True
        params = self._top_down(x.shape[0], self.encoder(x))[0]
        for m in convs:
            m.init_pending = False
        if self.decoder.log_scale is not None:
            residual_std = (x - params[:, : x.shape[1]]).std().clamp_min(1e-3)
            self.decoder.log_scale.fill_(math.log(residual_std.item() * math.sqrt(3.0) / math.pi))

    def split_latents(self, z: Tensor) -> list[Tensor]:
        """Flattened latents (n, D) as one (n, z_channels, h, w) map per rung, rung 0 first."""
        sizes = [math.prod(s) for s in self.z_shapes]
        return [t.reshape(-1, *s) for t, s in zip(z.split(sizes, dim=1), self.z_shapes)]

    def decode_mean(self, z: Tensor) -> Tensor:
        """Mean images (n, C, H, W) with the given latents fed at every rung."""
        return self.likelihood.mean(self._top_down(z.shape[0], given=self.split_latents(z))[0])

    def encode_mean(self, x: Tensor) -> Tensor:
        """Latents (B, D) of the top-down pass that takes every base posterior at its mean (eps = 0)."""
        zs = self._top_down(x.shape[0], self.encoder(x), noise=torch.zeros_like)[1]
        return torch.cat([t.flatten(1) for t in zs], dim=1)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean images decoded from one posterior sample per image."""
        return self.likelihood.mean(self._top_down(x.shape[0], self.encoder(x))[0])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Mean images (n, C, H, W) from ancestral samples of the prior."""

        def noise(t: Tensor) -> Tensor:
            if generator is None:
                return torch.randn_like(t)
            return torch.randn(t.shape, generator=generator, dtype=t.dtype, device=generator.device).to(t.device)

        return self.likelihood.mean(self._top_down(n, noise=noise)[0])


def build_ladder(
    variant: str | Variant, net: dict[str, Any], image_shape: tuple[int, int, int], likelihood: str
) -> LadderVAE:
    """The resvae_r{rungs}_{gauss,iaf} model with ladder settings `net` for images of shape (C, H, W)."""
    v = parse_variant(variant) if isinstance(variant, str) else variant
    return LadderVAE(v, ladder_settings(net), tuple(image_shape), likelihood)
